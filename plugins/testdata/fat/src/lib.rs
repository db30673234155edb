//! A plugin whose linear memory starts above 48 MiB (a large zeroed static),
//! so a smaller memory cap must refuse it at instantiation.
use herald_plugin_sdk::prelude::*;

static mut BALLAST: [u8; 48 << 20] = [0; 48 << 20];

struct Fat;

impl Plugin for Fat {
    fn describe() -> Description {
        Description::new("fat", env!("CARGO_PKG_VERSION")).config_schema(json!({"type": "object"}))
    }

    fn send(msg: Outbound) -> Result<Sent, SendError> {
        // Touch the ballast so it cannot be optimised away.
        // SAFETY: single-threaded guest; the static is only read here.
        let first = unsafe { std::ptr::addr_of!(BALLAST).cast::<u8>().read_volatile() };
        Ok(Sent::with_id(Some(format!(
            "{}-{first}",
            msg.idempotency_key
        ))))
    }
}

export_plugin!(Fat);
