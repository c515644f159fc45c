//! What every Sluice binary does about panics: a panic is a bug, but the operator still
//! gets one readable line (program, thread, place, message), never a backtrace.
//!
//! Nothing here changes how a panic unwinds: threads that catch panics (the gateway's
//! workers) still see them, and a panic on the main thread still exits with 101.

use std::any::Any;

/// Installs a panic hook that prints `PROGRAM: internal error: thread NAME panicked at
/// FILE:LINE: MESSAGE` on one line to standard error.
pub fn one_line_panics(program: &'static str) {
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "{program}: internal error: thread {} panicked{location}: {}",
            thread.name().unwrap_or("unnamed"),
            panic_message(info.payload())
        );
    }));
}

/// A panic's message: its `&str` or `String` payload, on one line.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    let text = if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_string()
    };
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_from_str_and_string_payloads_on_one_line() {
        let caught = std::panic::catch_unwind(|| panic!("two\nlines {}", 2)).unwrap_err();
        assert_eq!(panic_message(&*caught), "two lines 2");
        let caught = std::panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_message(&*caught), "static");
        let caught = std::panic::catch_unwind(|| std::panic::panic_any(7u8)).unwrap_err();
        assert_eq!(panic_message(&*caught), "(no message)");
    }
}
