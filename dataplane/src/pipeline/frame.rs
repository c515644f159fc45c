//! A packet inside its buffer, with headroom in front so outer headers can grow.

/// A packet occupying `buf[start..start + len]`. The bytes before `start` are headroom:
/// the pipeline may move `start` back to write longer outer headers (Geneve options)
/// without copying the inner frame. In the engine `buf` is one UMEM frame.
#[derive(Debug)]
pub struct Frame<'a> {
    buf: &'a mut [u8],
    start: usize,
    len: usize,
}

impl<'a> Frame<'a> {
    /// `None` when `start + len` exceeds the buffer.
    pub fn new(buf: &'a mut [u8], start: usize, len: usize) -> Option<Self> {
        (start.checked_add(len)? <= buf.len()).then_some(Self { buf, start, len })
    }

    /// The packet's bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// Offset of the packet's first byte in the buffer.
    pub fn start(&self) -> usize {
        self.start
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole buffer, headroom included.
    pub(crate) fn buf_mut(&mut self) -> &mut [u8] {
        self.buf
    }

    /// Makes `buf[start..start + len]` the packet. Callers keep it inside the buffer.
    pub(crate) fn set_bounds(&mut self, start: usize, len: usize) {
        debug_assert!(start + len <= self.buf.len());
        self.start = start;
        self.len = len;
    }
}
