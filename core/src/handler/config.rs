//! The device config space: GET_CONFIG and SET_CONFIG (CONFIG negotiated).

use zerocopy::IntoBytes;

use super::checks::{config_flags, config_header, config_range};
use super::{Handler, HandlerError, Reply};
use crate::message::{Request, MAX_CONFIG_SIZE};

impl Handler {
    /// GET_CONFIG: the header echoed, then the bytes asked for.
    pub(super) fn get_config(&mut self, payload: &[u8]) -> Result<Option<Reply>, HandlerError> {
        let request = Request::GetConfig;
        let (h, rest) = config_header(request, payload)?;
        // Reads may reach past the device's fields (a newer front-end's larger struct): those
        // bytes read as zero, up to the largest config space the protocol carries.
        config_range(request, &h, rest.len(), MAX_CONFIG_SIZE as usize)?;
        let mut out = h.as_bytes().to_vec();
        let start = out.len();
        out.resize(start + h.size as usize, 0);
        let size = self.device.config_size();
        let off = h.offset as usize;
        if off < size {
            let n = (h.size as usize).min(size - off);
            self.device.read_config(off, &mut out[start..start + n]);
        }
        Ok(Some(Reply {
            body: out,
            fds: Vec::new(),
        }))
    }

    /// SET_CONFIG: within the device's config space; the device refuses read-only fields.
    pub(super) fn set_config(&mut self, payload: &[u8]) -> Result<Option<Reply>, HandlerError> {
        let request = Request::SetConfig;
        let (h, rest) = config_header(request, payload)?;
        config_flags(&h)?;
        config_range(request, &h, rest.len(), self.device.config_size())?;
        self.device.write_config(h.offset as usize, rest)?;
        Ok(None)
    }
}
