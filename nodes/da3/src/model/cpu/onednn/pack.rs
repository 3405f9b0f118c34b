//! Weights reordered once into the layout oneDNN's matmul reads in place ([`Packed`]):
//! its matmul otherwise copies the whole weight into that layout on every call.

use std::ffi::{c_char, c_void, CStr};

use super::{
    api, with_stream, Api, Dims, ExecArg, Handle, Input, ARG_DST, ARG_SRC, FORMAT_TAG_ANY,
    QUERY_IMPL_INFO_STR, QUERY_WEIGHTS_MD,
};
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
    let dims = |rows: usize, cols: usize| {
        let mut d: Dims = [0; 12];
        d[0] = rows as i64;
        d[1] = cols as i64;
        d
    };
    let mut mds: [Handle; 3] = [std::ptr::null_mut(); 3];
    let parts = [
        (dims(PACK_ROWS, k), dt, [k as i64, 1]),
        (dims(k, n), dt, [0, 0]),
        (dims(PACK_ROWS, n), 3, [n as i64, 1]),
    ];
    let mut ok = true;
    for (h, (d, t, st)) in mds.iter_mut().zip(parts) {
        let s = if st[0] == 0 {
            (api.md_create_with_tag)(h, 2, &d, t, FORMAT_TAG_ANY)
        } else {
            let mut sd: Dims = [0; 12];
            sd[0] = st[0];
            sd[1] = st[1];
            (api.md_create_with_strides)(h, 2, &d, t, &sd)
        };
        ok &= s == 0;
    }
    let mut out = Err("oneDNN packed weights: memory desc".to_string());
    if ok {
        let mut pd: Handle = std::ptr::null_mut();
        let null = std::ptr::null_mut();
        out = Ok(None);
        if (api.matmul_pd_create)(&mut pd, engine, mds[0], mds[1], null, mds[2], null) == 0 {
            let mut info: *const c_char = std::ptr::null();
            let info_ptr = (&mut info as *mut *const c_char).cast();
            let optimised = (api.pd_query)(pd, QUERY_IMPL_INFO_STR, 0, info_ptr) == 0
                && !info.is_null()
                && !CStr::from_ptr(info).to_bytes().starts_with(b"ref");
            let w = (api.pd_query_md)(pd, QUERY_WEIGHTS_MD, 0);
            if optimised && !w.is_null() {
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
    for h in mds.into_iter().filter(|h| !h.is_null()) {
        (api.md_destroy)(h);
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
    let mut d: Dims = [0; 12];
    d[0] = k as i64;
    d[1] = n as i64;
    let mut st: Dims = [0; 12];
    st[0] = w.rs as i64;
    st[1] = w.cs as i64;
    let mut src: Handle = std::ptr::null_mut();
    let mut result = None;
    let layout = std::alloc::Layout::from_size_align(size.max(64), 64).ok();
    if let (Some(layout), 0) = (
        layout,
        (api.md_create_with_strides)(&mut src, 2, &d, input.dnnl(), &st),
    ) {
        let buf = std::alloc::alloc(layout);
        let mut pd: Handle = std::ptr::null_mut();
        let null = std::ptr::null_mut();
        let mut prim: Handle = std::ptr::null_mut();
        let mut mems: [Handle; 2] = [std::ptr::null_mut(); 2];
        let done = !buf.is_null()
            && (api.reorder_pd_create)(&mut pd, src, engine, packed, engine, null) == 0
            && (api.primitive_create)(&mut prim, pd) == 0
            && (api.memory_create)(&mut mems[0], src, engine, w.ptr as *mut c_void) == 0
            && (api.memory_create)(&mut mems[1], packed, engine, buf.cast()) == 0
            && with_stream(api, |stream| {
                let args = [
                    ExecArg {
                        arg: ARG_SRC,
                        memory: mems[0],
                    },
                    ExecArg {
                        arg: ARG_DST,
                        memory: mems[1],
                    },
                ];
                (api.primitive_execute)(prim, stream, 2, args.as_ptr()) == 0
                    && (api.stream_wait)(stream) == 0
            });
        for m in mems.into_iter().filter(|m| !m.is_null()) {
            (api.memory_destroy)(m);
        }
        if !prim.is_null() {
            (api.primitive_destroy)(prim);
        }
        if !pd.is_null() {
            (api.pd_destroy)(pd);
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
    if !src.is_null() {
        (api.md_destroy)(src);
    }
    (api.md_destroy)(packed);
    result
}
