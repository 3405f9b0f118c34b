//! Weights reordered once into the layout oneDNN's matmul reads in place ([`Packed`]):
//! its matmul otherwise copies the whole weight into that layout on every call.

use std::ffi::c_void;

use super::{api, md_2d, optimised, reorder, with_state, Api, Handle, Input, QUERY_WEIGHTS_MD};
use crate::model::cpu::buffers::Mat;

/// Rows of the matmul that picks the packed weights' layout ([`packed_md`]). The layout
/// depends on the weights' shape, type and the CPU, not on the row count: every primitive
/// that reads packed weights is built with the layout this one chose.
const PACK_ROWS: usize = 256;

/// The layout oneDNN's matmul reads `k×n` weights of type `input` in without copying them
/// per call (blocked over n and k), as a new memory desc (the caller destroys it);
/// `Ok(None)` when its matmul here has only reference code for these types.
pub(super) unsafe fn packed_md(
    api: &Api,
    input: Input,
    n: usize,
    k: usize,
) -> Result<Option<Handle>, String> {
    let dt = input.dnnl();
    let engine = api.engine as Handle;
    let parts = [
        ((PACK_ROWS, k), dt, Some((k as isize, 1))),
        ((k, n), dt, None),
        ((PACK_ROWS, n), 3, Some((n as isize, 1))),
    ];
    let mds: Vec<Result<Handle, String>> = parts
        .into_iter()
        .map(|(dims, t, st)| md_2d(api, dims, t, st))
        .collect();
    let mut out = Ok(None);
    if let [Ok(src), Ok(wei), Ok(dst)] = mds[..] {
        let mut pd: Handle = std::ptr::null_mut();
        let null = std::ptr::null_mut();
        if (api.matmul_pd_create)(&mut pd, engine, src, wei, null, dst, null) == 0 {
            let w = (api.pd_query_md)(pd, QUERY_WEIGHTS_MD, 0);
            if optimised(api, pd) && !w.is_null() {
                let mut c: Handle = std::ptr::null_mut();
                out = if (api.md_clone)(&mut c, w) == 0 {
                    Ok(Some(c))
                } else {
                    Err("oneDNN packed weights: clone".to_string())
                };
            }
            (api.pd_destroy)(pd);
        }
    }
    for m in mds {
        match m {
            Ok(h) => {
                (api.md_destroy)(h);
            }
            Err(e) => out = Err(e),
        }
    }
    out
}

/// A linear layer's weights reordered once into the layout oneDNN's matmul reads in place
/// ([`packed_md`]): its matmul then skips the copy of the whole weight that it makes on
/// every call for weights in their stored (transposed) layout. Built at load ([`pack`]),
/// held by the layer (`linear::PackedWeight`).
pub(in crate::model::cpu) struct Packed {
    pub(super) input: Input,
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) buf: *mut u8,
    layout: std::alloc::Layout,
}

// SAFETY: `buf` is owned, written once in `pack`, then only read.
unsafe impl Send for Packed {}
unsafe impl Sync for Packed {}

impl Drop for Packed {
    fn drop(&mut self) {
        // SAFETY: allocated in `pack` with this layout.
        unsafe { std::alloc::dealloc(self.buf, self.layout) }
    }
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Packed({:?} {}x{}, {} bytes)",
            self.input,
            self.k,
            self.n,
            self.layout.size()
        )
    }
}

/// `w` (`k×n`, any strides, of type `input`) in oneDNN's packed layout, or `None` where
/// oneDNN is not loaded or off, or has only reference code for the type (the caller keeps
/// the stored weights).
///
/// # Safety
/// `w` must be valid for its strides over `k×n` elements of type `input`.
pub(in crate::model::cpu) unsafe fn pack(
    input: Input,
    n: usize,
    k: usize,
    w: Mat<*const c_void>,
) -> Option<Packed> {
    if n == 0 || k == 0 || !crate::tuning::get().dnnl {
        return None;
    }
    let api = api()?;
    let packed = match packed_md(api, input, n, k) {
        Ok(Some(md)) => md,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!("{e}; the weights stay in their stored layout");
            return None;
        }
    };
    let size = (api.md_get_size)(packed);
    let engine = api.engine as Handle;
    let src = md_2d(api, (k, n), input.dnnl(), Some((w.rs, w.cs)));
    let mut result = None;
    let layout = std::alloc::Layout::from_size_align(size.max(64), 64).ok();
    if let (Some(layout), Ok(src)) = (layout, &src) {
        let src = *src;
        let buf = std::alloc::alloc(layout);
        let mut dst: Handle = std::ptr::null_mut();
        let done = !buf.is_null()
            && (api.memory_create)(&mut dst, packed, engine, buf.cast()) == 0
            && with_state(api, |state| {
                reorder(api, state.stream, (src, w.ptr), (packed, dst))
            });
        if !dst.is_null() {
            (api.memory_destroy)(dst);
        }
        if done {
            result = Some(Packed {
                input,
                n,
                k,
                buf,
                layout,
            });
        } else if !buf.is_null() {
            std::alloc::dealloc(buf, layout);
        }
    }
    if let Ok(src) = src {
        (api.md_destroy)(src);
    }
    (api.md_destroy)(packed);
    result
}
