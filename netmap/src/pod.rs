//! Plain old data: types valid for every bit pattern.

/// Types for which every bit pattern is a valid value and that contain no
/// padding the compiler relies on, so they can be copied to and from shared
/// memory that another process writes.
///
/// # Safety
/// Implement only for `#[repr(C)]` (or primitive) types made of integers and
/// arrays of integers, with no references, pointers, `bool`, `char` or enums.
pub unsafe trait Pod: Copy + 'static {}

macro_rules! pod {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: a primitive integer or a repr(C) struct of integers
            // (see the layout tests in abi.rs); every bit pattern is valid.
            unsafe impl Pod for $t {}
        )*
    };
}

pod!(u8, u16, u32, u64, i8, i16, i32, i64, usize, isize);

pod!(
    crate::abi::NetmapSlot,
    crate::abi::NmCsbAtok,
    crate::abi::NmCsbKtoa,
    crate::abi::Timeval,
    crate::abi::NmreqHeader,
    crate::abi::NmreqOption,
    crate::abi::NmreqRegister,
    crate::abi::NmreqPortInfoGet,
    crate::abi::NmreqValeAttach,
    crate::abi::NmreqValeDetach,
    crate::abi::NmreqValeList,
    crate::abi::NmreqPortHdr,
    crate::abi::NmreqValeNewif,
    crate::abi::NmreqValePolling,
    crate::abi::NmreqPoolsInfo,
    crate::abi::NmreqSyncKloopStart,
    crate::abi::NmreqEventfdPair,
    crate::abi::NmreqOptSyncKloopEventfds,
    crate::abi::NmreqOptSyncKloopMode,
    crate::abi::NmreqOptExtmem,
    crate::abi::NmreqOptCsb,
    crate::abi::NmreqOptOffsets,
    crate::ctrl::ValePortConfig,
    crate::ctrl::ValeVhostNewif,
    crate::ctrl::ValeSwitchConfig,
);
