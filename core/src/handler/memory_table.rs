//! The memory table: SET_MEM_TABLE replaces it, ADD_MEM_REG and REM_MEM_REG change one
//! region (CONFIGURE_MEM_SLOTS). Rings keep their front-end addresses across changes.

use std::os::fd::OwnedFd;

use super::checks::mem_table;
use super::{Handler, HandlerError, Reply};
use crate::message::SingleMemoryRegion;

impl Handler {
    /// SET_MEM_TABLE: the regions and one file descriptor for each.
    pub(super) fn set_mem_table(
        &mut self,
        payload: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<Option<Reply>, HandlerError> {
        let regions = mem_table(payload, fds.len())?;
        self.mem.set_table(regions.into_iter().zip(fds).collect())?;
        // Rings keep their guest physical addresses; re-translate what was configured.
        for i in 0..self.vrings.len() {
            if let Some(a) = self.vrings[i].addr {
                if self.vrings[i].worker.is_none() {
                    self.vrings[i].gpa = self.translate(&a, self.vrings[i].size).ok();
                }
            }
        }
        Ok(None)
    }

    /// ADD_MEM_REG.
    pub(super) fn add_mem_reg(
        &mut self,
        r: SingleMemoryRegion,
        fd: OwnedFd,
    ) -> Result<Option<Reply>, HandlerError> {
        self.mem.add_region(r.region, fd)?;
        Ok(None)
    }

    /// REM_MEM_REG (a file descriptor sent along is ignored).
    pub(super) fn rem_mem_reg(
        &mut self,
        r: SingleMemoryRegion,
    ) -> Result<Option<Reply>, HandlerError> {
        self.mem.remove_region(&r.region)?;
        Ok(None)
    }
}
