//! A WASI component with an unrelated export and no `herald:channel/connector`
//! export: `herald plugin inspect` must say precisely why it is not a plugin.

/// An export that is not part of the Herald contract.
#[no_mangle]
pub extern "C" fn add(a: i32, b: i32) -> i32 {
    a + b
}

/// Reads a file so the component imports `wasi:filesystem`.
#[no_mangle]
pub extern "C" fn touch() -> i32 {
    std::fs::metadata("/").map(|_| 1).unwrap_or(0)
}
