//! The two ways a guest ends the VM: the ACPI PM registers and the i8042 reset line.
//!
//! The FADT places the PM1a event and control blocks and the reset register at
//! [`ACPI_PM_BASE`] (see `boot/acpi.rs`): Linux writes `SLP_TYP(5) | SLP_EN` to PM1a control
//! to power off and the reset value to the reset register to reboot. With `reboot=k` Linux
//! pulses the reset line through the keyboard controller instead (0xfe to port 0x64). Either
//! ends the VM through [`VmControl`].
//!
//! [`ACPI_PM_BASE`]: crate::boot::layout::ACPI_PM_BASE

use crate::boot::acpi::{
    PM1_CNT_OFFSET, PM1_CNT_S5, PM1_CNT_SCI_EN, PM1_CNT_SLP_EN, PM1_CNT_SLP_TYP_MASK,
    PM1_EN_OFFSET, RESET_OFFSET, RESET_VALUE,
};
use crate::bus::BusDevice;
use crate::control::{ExitReason, VmControl};

/// The ACPI PM1a event/control blocks and the reset register.
pub struct AcpiPmPorts {
    control: VmControl,
    /// PM1a control as last written (only `SCI_EN` matters; it reads as set).
    pm1_cnt: u16,
    /// PM1a enable as last written. No fixed event ever fires, but Linux reads back the
    /// global-lock enable it sets and disables the ACPI global lock (with two error lines)
    /// when the bit does not stick.
    pm1_en: u16,
}

impl AcpiPmPorts {
    /// Creates the registers; exits go to `control`.
    pub fn new(control: VmControl) -> Self {
        AcpiPmPorts {
            control,
            pm1_cnt: PM1_CNT_SCI_EN,
            pm1_en: 0,
        }
    }
}

impl BusDevice for AcpiPmPorts {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        // PM1 status reads as zero: no fixed event ever fires.
        let reg = match offset {
            PM1_EN_OFFSET => self.pm1_en,
            PM1_CNT_OFFSET => self.pm1_cnt | PM1_CNT_SCI_EN,
            _ => return,
        };
        if data.len() <= 2 {
            data.copy_from_slice(&reg.to_le_bytes()[..data.len()]);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match (offset, data) {
            (PM1_CNT_OFFSET, [lo, hi]) => {
                let v = u16::from_le_bytes([*lo, *hi]);
                if v & (PM1_CNT_SLP_EN | PM1_CNT_SLP_TYP_MASK) == PM1_CNT_S5 {
                    self.control.request_exit(ExitReason::PowerOff);
                } else if v & PM1_CNT_SLP_EN != 0 {
                    log::warn!("acpi: unsupported sleep request {v:#x} ignored");
                }
                self.pm1_cnt = v & !PM1_CNT_SLP_EN;
            }
            (PM1_EN_OFFSET, [lo, hi]) => self.pm1_en = u16::from_le_bytes([*lo, *hi]),
            (RESET_OFFSET, [RESET_VALUE]) => self.control.request_exit(ExitReason::Reset),
            _ => log::debug!("acpi pm: ignored write {data:x?} at +{offset}"),
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
    use crate::boot::acpi::PM1_EVT_OFFSET;

    #[test]
    fn acpi_ports_power_off_and_reset() {
        let c = VmControl::default();
        let mut p = AcpiPmPorts::new(c.clone());
        let mut d = [0u8; 2];
        p.read(0, PM1_CNT_OFFSET, &mut d);
        assert_eq!(u16::from_le_bytes(d) & PM1_CNT_SCI_EN, PM1_CNT_SCI_EN);
        // Status clears, an S5 type without SLP_EN, and a byte write are not power-off.
        p.write(0, 0, &[0xff, 0xff]);
        p.write(
            0,
            PM1_CNT_OFFSET,
            &(PM1_CNT_S5 & !PM1_CNT_SLP_EN).to_le_bytes(),
        );
        p.write(0, PM1_CNT_OFFSET, &[0x34]);
        // S3 is refused, not a power-off.
        p.write(
            0,
            PM1_CNT_OFFSET,
            &((3 << 10) | PM1_CNT_SLP_EN).to_le_bytes(),
        );
        assert_eq!(c.exit_reason(), None);
        p.write(
            0,
            PM1_CNT_OFFSET,
            &(PM1_CNT_S5 | PM1_CNT_SCI_EN).to_le_bytes(),
        );
        assert_eq!(c.exit_reason(), Some(ExitReason::PowerOff));

        // The enable register keeps what Linux writes (GBL_EN, bit 5); status stays zero.
        p.write(0, PM1_EN_OFFSET, &0x20u16.to_le_bytes());
        p.read(0, PM1_EN_OFFSET, &mut d);
        assert_eq!(u16::from_le_bytes(d), 0x20);
        p.read(0, PM1_EVT_OFFSET, &mut d);
        assert_eq!(d, [0, 0]);

        let c = VmControl::default();
        let mut p = AcpiPmPorts::new(c.clone());
        p.write(0, RESET_OFFSET, &[2]);
        assert_eq!(c.exit_reason(), None);
        p.write(0, RESET_OFFSET, &[RESET_VALUE]);
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
