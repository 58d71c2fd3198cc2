//! (under construction)

pub mod acpi;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod paging;
pub mod regs;
pub mod zero_page;
