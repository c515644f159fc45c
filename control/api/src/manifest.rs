//! Transactions as YAML: one or more documents in the sluice-api schema (the names the
//! CRDs use), merged into one transaction. Shared by `sluicectl apply` and the gateway's
//! `tables.file`.
//!
//! YAML is read with serde_norway, the maintained fork of the deprecated serde_yaml.
//! Fields are checked as they are read (a bad CIDR fails here, with its line); checks
//! against table state are the gateway's.

use serde::Deserialize;

use crate::Transaction;

/// Parses every YAML document of `text` as a transaction and concatenates them.
pub fn parse(text: &str) -> Result<Transaction, serde_norway::Error> {
    let mut txn = Transaction::default();
    for document in serde_norway::Deserializer::from_str(text) {
        let part = Transaction::deserialize(document)?;
        txn.upserts.extend(part.upserts);
        txn.deletes.extend(part.deletes);
    }
    Ok(txn)
}
