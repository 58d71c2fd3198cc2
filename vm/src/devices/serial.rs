//! The 8250 UART at 0x3f8 (COM1, IRQ 4): the guest console.
//!
//! vm-superio does the register model; this adapter puts it on the port bus and raises its
//! interrupt through an eventfd that the VM binds to GSI 4 as an irqfd.

use std::io::Write;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// COM1's base port.
pub const COM1_PORT: u64 = 0x3f8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u32 = 4;

/// An eventfd the serial model writes to raise its interrupt.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// COM1 on the port bus, writing the guest's output to `W`.
pub struct SerialConsole<W: Write + Send> {
    serial: Serial<IrqTrigger, vm_superio::serial::NoEvents, W>,
}

impl<W: Write + Send> SerialConsole<W> {
    /// Creates the UART; `irq` is signalled whenever the guest should see an interrupt.
    pub fn new(irq: EventFd, out: W) -> Self {
        SerialConsole {
            serial: Serial::new(IrqTrigger(irq), out),
        }
    }
}

impl<W: Write + Send> BusDevice for SerialConsole<W> {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < 8 {
            data[0] = self.serial.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < 8 {
            if let Err(e) = self.serial.write(offset as u8, data[0]) {
                log::warn!("serial: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_bytes_and_ignores_wide_accesses() {
        let sink = Sink::default();
        let mut s = SerialConsole::new(EventFd::new(0).unwrap(), sink.clone());
        s.write(COM1_PORT, 0, b"h");
        s.write(COM1_PORT, 0, b"i");
        s.write(COM1_PORT, 0, &[1, 2]);
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        let mut d = [0u8; 2];
        s.read(COM1_PORT, 5, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        // Line status: transmitter empty.
        let mut lsr = [0u8];
        s.read(COM1_PORT, 5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }
}
