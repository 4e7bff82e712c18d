//! Stopping `ring` and `serve` cleanly on SIGINT (Ctrl-C) or SIGTERM: the signal handler only
//! sets atomics (async-signal-safe, through `signal-hook`); the command's loop sees the flag,
//! stops, prints its report and removes its socket. A second signal ends the process at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};

/// The flag SIGINT and SIGTERM set, and which of them arrived first.
pub struct StopSignal {
    flag: Arc<AtomicBool>,
    which: Arc<AtomicUsize>,
}

impl StopSignal {
    /// Installs the handlers. Call it once, before the work starts.
    pub fn install() -> std::io::Result<StopSignal> {
        let flag = Arc::new(AtomicBool::new(false));
        let which = Arc::new(AtomicUsize::new(0));
        for signal in [SIGINT, SIGTERM] {
            // Registered first, so it looks at the flag before this signal sets it: only a
            // second signal ends the process (with the shell's code for death by that signal).
            signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, flag.clone())?;
            // Which signal, stored before the flag, so whoever sees the flag can name it.
            signal_hook::flag::register_usize(signal, which.clone(), signal as usize)?;
            signal_hook::flag::register(signal, flag.clone())?;
        }
        Ok(StopSignal { flag, which })
    }

    /// The flag itself, to hand to a loop that checks it (`RingConfig::stop`).
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }

    /// Whether a signal (or anything else holding the flag) asked to stop.
    pub fn stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// "SIGINT" or "SIGTERM" once one arrived.
    pub fn signal_name(&self) -> Option<&'static str> {
        match self.which.load(Ordering::SeqCst) {
            s if s == SIGINT as usize => Some("SIGINT"),
            s if s == SIGTERM as usize => Some("SIGTERM"),
            _ => None,
        }
    }

    /// Why the command stopped, for its last line: "SIGINT", "SIGTERM" or "a stop request".
    pub fn reason(&self) -> &'static str {
        self.signal_name().unwrap_or("a stop request")
    }
}
