//! (under construction)

pub mod gdt;
pub mod layout;
pub mod paging;
