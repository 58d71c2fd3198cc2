//! The two ways a guest ends the VM: the ACPI sleep/reset register and the i8042 reset line.
//!
//! The FADT points its sleep-control and reset registers at [`layout::ACPI_SHUTDOWN_PORT`]
//! (see `boot/acpi.rs`): Linux writes `SLP_TYP(5) << 2 | SLP_EN` there to power off and the
//! reset value to reboot. With `reboot=k` Linux pulses the reset line through the keyboard
//! controller instead (0xfe to port 0x64). Either ends the VM through [`VmControl`].
//!
//! [`layout::ACPI_SHUTDOWN_PORT`]: crate::boot::layout::ACPI_SHUTDOWN_PORT

use crate::boot::acpi::{RESET_VALUE, SHUTDOWN_VALUE};
use crate::bus::BusDevice;
use crate::control::{ExitReason, VmControl};

/// The ACPI power-management port: S5 power-off and reset.
pub struct AcpiPowerPort {
    control: VmControl,
}

impl AcpiPowerPort {
    /// Creates the port; exits go to `control`.
    pub fn new(control: VmControl) -> Self {
        AcpiPowerPort { control }
    }
}

impl BusDevice for AcpiPowerPort {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        // Sleep status: never "woken"; Linux only polls it after a sleep that never returns.
        data.fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, [SHUTDOWN_VALUE]) => self.control.request_exit(ExitReason::PowerOff),
            (0, [RESET_VALUE]) => self.control.request_exit(ExitReason::Reset),
            _ => log::debug!("acpi power port: ignored write {data:x?} at +{offset}"),
        }
    }
}

/// The i8042 keyboard controller at 0x60..0x64, reduced to what Linux touches without a
/// keyboard: status reads as "nothing pending" and command 0xfe resets the machine.
pub struct I8042 {
    control: VmControl,
}

/// The i8042 data port.
pub const I8042_DATA_PORT: u64 = 0x60;
/// Bytes from the data port to the command/status port inclusive.
pub const I8042_PORT_LEN: u64 = 5;
const I8042_CMD_OFFSET: u64 = 4;
const I8042_CMD_RESET: u8 = 0xfe;

impl I8042 {
    /// Creates the controller; a reset goes to `control`.
    pub fn new(control: VmControl) -> Self {
        I8042 { control }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset == I8042_CMD_OFFSET && data == [I8042_CMD_RESET] {
            self.control.request_exit(ExitReason::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acpi_port_powers_off_and_resets() {
        let c = VmControl::default();
        let mut p = AcpiPowerPort::new(c.clone());
        p.write(0, 1, &[SHUTDOWN_VALUE]);
        p.write(0, 0, &[0x12]);
        assert_eq!(c.exit_reason(), None);
        p.write(0, 0, &[SHUTDOWN_VALUE]);
        assert_eq!(c.exit_reason(), Some(ExitReason::PowerOff));

        let c = VmControl::default();
        let mut p = AcpiPowerPort::new(c.clone());
        p.write(0, 0, &[RESET_VALUE]);
        assert_eq!(c.exit_reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn i8042_reset_only_on_command_port() {
        let c = VmControl::default();
        let mut k = I8042::new(c.clone());
        k.write(I8042_DATA_PORT, 0, &[I8042_CMD_RESET]);
        assert_eq!(c.exit_reason(), None);
        k.write(I8042_DATA_PORT, I8042_CMD_OFFSET, &[I8042_CMD_RESET]);
        assert_eq!(c.exit_reason(), Some(ExitReason::Reset));
    }
}
