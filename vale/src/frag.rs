//! Fragments: the engine's only window on packet memory.
//!
//! A source presents each frame as one or more fragments (netmap slots
//! chained with `NS_MOREFRAG`): a pointer into memory the source owns —
//! a client's buffer in a shared region, a guest buffer, a NIC ring — that
//! stays readable until the source's [`complete`](crate::Source::complete).
//! A sink offers [`DstBuf`]s, writable until it publishes. The promise that
//! makes the pointers valid is made once, by the port implementation, in
//! the `unsafe` constructors here; everything the engine does with them is
//! bounds-checked safe code.

use std::marker::PhantomData;
use std::ptr::NonNull;

/// One fragment of a frame in source memory.
#[derive(Debug, Clone, Copy)]
///
/// `'a` is the borrow the fragment was made from ([`Frag::from_slice`]);
/// a fragment made from a raw pointer ([`Frag::new`]) is `'static`, its
/// maker having promised validity until the source completes.
pub struct Frag<'a> {
    ptr: NonNull<u8>,
    len: u16,
    flags: u16,
    bad: bool,
    _data: PhantomData<&'a [u8]>,
}

// SAFETY: a Frag is a read-only view whose validity is guaranteed by the
// source until `complete`; moving it to another thread changes nothing.
unsafe impl Send for Frag<'_> {}

impl Frag<'static> {
    /// A fragment of `len` bytes at `ptr`, with netmap slot `flags`.
    ///
    /// # Safety
    /// `ptr` must be readable for `len` bytes from the moment the fragment is
    /// handed to the engine until the source's `complete` returns, and not be
    /// written by this process in that time except through shared-memory
    /// races the caller accepts (another process may change the bytes; the
    /// engine copies them once and trusts nothing it read twice).
    #[inline]
    pub unsafe fn new(ptr: *const u8, len: u16, flags: u16) -> Frag<'static> {
        Frag {
            ptr: NonNull::new(ptr as *mut u8).unwrap_or(NonNull::dangling()),
            len,
            flags,
            bad: false,
            _data: PhantomData,
        }
    }

    /// A placeholder for a slot the source found invalid (buffer index out
    /// of range, length over the buffer, an address outside guest memory):
    /// it keeps the source's frame count right and the engine drops the
    /// frame as [`DropReason::BadSlot`](crate::DropReason::BadSlot).
    #[inline]
    pub fn bad(flags: u16) -> Frag<'static> {
        Frag {
            ptr: NonNull::dangling(),
            len: 0,
            flags,
            bad: true,
            _data: PhantomData,
        }
    }
}

impl<'a> Frag<'a> {
    /// Whether this is a [`bad`](Self::bad) placeholder.
    #[inline]
    pub fn is_bad(&self) -> bool {
        self.bad
    }

    /// A fragment over (the first 65535 bytes of) a byte slice, for as
    /// long as the slice is borrowed — the safe constructor.
    #[inline]
    pub fn from_slice(data: &'a [u8], flags: u16) -> Frag<'a> {
        Frag {
            ptr: NonNull::new(data.as_ptr() as *mut u8).unwrap_or(NonNull::dangling()),
            len: data.len().min(u16::MAX as usize) as u16,
            flags,
            bad: false,
            _data: PhantomData,
        }
    }

    /// The same fragment with other slot flags.
    #[inline]
    pub fn with_flags(self, flags: u16) -> Frag<'a> {
        Frag { flags, ..self }
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> u16 {
        self.len
    }

    /// Whether the fragment is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The fragment's address, as a number (for a prefetch hint: nothing
    /// may be read through it).
    #[inline]
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// netmap slot flags (`NS_MOREFRAG`, `NS_NO_LEARN`, the port byte…).
    #[inline]
    pub fn flags(&self) -> u16 {
        self.flags
    }

    /// Copies `out.len()` bytes starting at `at` into `out`; returns how many
    /// bytes were available (less than asked at the end of the fragment).
    #[inline]
    pub fn read(&self, at: usize, out: &mut [u8]) -> usize {
        let n = (self.len as usize).saturating_sub(at).min(out.len());
        if n > 0 {
            // SAFETY: [at, at+n) lies inside the fragment (n is clamped to
            // len - at), which the constructor's contract keeps readable;
            // `out` is a distinct Rust buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(at), out.as_mut_ptr(), n)
            };
        }
        n
    }
}

impl Frag<'_> {
    /// Copies the fragment's first `N` bytes into `out` in one fixed-size
    /// copy (a few register moves, no `memcpy` call); false, with `out`
    /// untouched, if the fragment is shorter.
    #[inline]
    pub fn read_prefix<const N: usize>(&self, out: &mut [u8; N]) -> bool {
        if (self.len as usize) < N {
            return false;
        }
        // SAFETY: the fragment is readable for `len >= N` bytes (the
        // constructor's contract); `out` is a distinct Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), out.as_mut_ptr(), N) };
        true
    }
}

/// A destination buffer a sink lends the engine.
#[derive(Debug)]
///
/// `'a` is the borrow it was made from ([`DstBuf::from_slice`]), or
/// `'static` for one made from a raw pointer ([`DstBuf::new`]).
pub struct DstBuf<'a> {
    ptr: NonNull<u8>,
    cap: usize,
    _buf: PhantomData<&'a mut [u8]>,
}

// SAFETY: a DstBuf is a write view whose validity the sink guarantees until
// it publishes; which thread writes through it changes nothing.
unsafe impl Send for DstBuf<'_> {}

impl DstBuf<'static> {
    /// A buffer of `cap` writable bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr` must be writable for `cap` bytes while the `DstBuf` lives, and
    /// nothing else in this process may access those bytes meanwhile.
    #[inline]
    pub unsafe fn new(ptr: *mut u8, cap: usize) -> DstBuf<'static> {
        DstBuf {
            ptr: NonNull::new(ptr).unwrap_or(NonNull::dangling()),
            cap,
            _buf: PhantomData,
        }
    }
}

impl<'a> DstBuf<'a> {
    /// A buffer over a mutable slice, for as long as it is borrowed.
    #[inline]
    pub fn from_slice(buf: &'a mut [u8]) -> DstBuf<'a> {
        DstBuf {
            ptr: NonNull::new(buf.as_mut_ptr()).unwrap_or(NonNull::dangling()),
            cap: buf.len(),
            _buf: PhantomData,
        }
    }

    /// Capacity in bytes.
    #[inline]
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// The buffer's address, as a number (for a sink that must say which
    /// memory it wrote, e.g. a migration's dirty log).
    #[inline]
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// Copies `len` bytes of `src` starting at `src_off` to `at`. Returns the
    /// bytes copied (clamped to both ends).
    #[inline]
    pub fn copy_from(&mut self, at: usize, src: &Frag<'_>, src_off: usize, len: usize) -> usize {
        let n = len
            .min((src.len as usize).saturating_sub(src_off))
            .min(self.cap.saturating_sub(at));
        if n > 0 {
            // SAFETY: both ranges are clamped to their buffers above. A
            // hostile client may name one buffer in a TX slot and an RX
            // slot, so the ranges may overlap: `copy` (memmove) allows it.
            unsafe { std::ptr::copy(src.ptr.as_ptr().add(src_off), self.ptr.as_ptr().add(at), n) };
        }
        n
    }

    /// Writes `data` at the start in one fixed-size copy when it fits
    /// (as [`write`](Self::write) otherwise); returns the bytes written.
    #[inline]
    pub fn write_prefix<const N: usize>(&mut self, data: &[u8; N]) -> usize {
        // Out of line, or the compiler merges the two copies into one
        // libc call of the smaller length.
        #[cold]
        #[inline(never)]
        fn short(b: &mut DstBuf<'_>, data: &[u8]) -> usize {
            b.write(0, data)
        }
        if self.cap < N {
            return short(self, data);
        }
        // SAFETY: N <= cap bytes of the buffer. One unaligned store of the
        // array (a few register moves, where a copy of a length the
        // compiler cannot see is a libc call).
        unsafe { std::ptr::write_unaligned(self.ptr.as_ptr() as *mut [u8; N], *data) };
        N
    }

    /// Writes `data` at `at`; returns the bytes written.
    #[inline]
    pub fn write(&mut self, at: usize, data: &[u8]) -> usize {
        let n = data.len().min(self.cap.saturating_sub(at));
        if n > 0 {
            // SAFETY: destination range clamped to the buffer; `data` is a
            // Rust slice distinct from it.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(at), n) };
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_copies_are_clamped() {
        let src = *b"0123456789";
        let f = Frag::from_slice(&src, 0);
        let mut out = [0u8; 4];
        assert_eq!(f.read(8, &mut out), 2);
        assert_eq!(&out[..2], b"89");
        assert_eq!(f.read(11, &mut out), 0);
        let mut dst = [0u8; 6];
        let mut d = DstBuf::from_slice(&mut dst);
        assert_eq!(d.copy_from(2, &f, 5, 100), 4);
        assert_eq!(d.copy_from(7, &f, 0, 1), 0);
        assert_eq!(d.write(5, b"xy"), 1);
        assert_eq!(&dst, &[0, 0, b'5', b'6', b'7', b'x']);
        let mut four = [0u8; 4];
        assert!(f.read_prefix(&mut four));
        assert_eq!(&four, b"0123");
        let mut big = [9u8; 11];
        assert!(!f.read_prefix(&mut big), "past the fragment");
        assert_eq!(big, [9; 11]);
        let mut d = DstBuf::from_slice(&mut dst[..3]);
        assert_eq!(d.write_prefix(b"ab"), 2);
        assert_eq!(d.write_prefix(b"wxyz"), 3, "clamped to the buffer");
        assert_eq!(&dst[..4], b"wxy6");
    }
}
