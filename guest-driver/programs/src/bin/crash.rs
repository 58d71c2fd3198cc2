//! Crashes the guest kernel on purpose (sysrq 'c'), so tests can check that the VMM reports a
//! guest panic as a failure with the console's last lines.

use std::io::Write;

fn main() {
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/sysrq-trigger")
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("crash: cannot open /proc/sysrq-trigger: {e}");
            std::process::exit(2);
        }
    };
    // Never returns when it works.
    let _ = f.write_all(b"c");
    eprintln!("crash: the kernel did not crash");
    std::process::exit(1);
}
