//! oneDNN's matmul (Intel's deep-learning kernel library, the one OpenVINO and PyTorch run
//! on x86 CPUs): the linear layers' GEMMs, f32 and bf16 -> f32 (and, in [`conv`], its bf16
//! channels-last convolution for the depth decoder and head). Its JIT kernels pick the
//! CPU's best instructions at run time from the CPU's features, not its vendor: AMX tiles on
//! Intel Xeon with AMX, `vdpbf16ps` on AVX512-BF16 CPUs (AMD Zen 4 too), AVX-512 / AVX2 FMA
//! for f32. Measured on DA3-SMALL's and DA3-BASE's layer shapes, one thread per call (AMD
//! EPYC Zen 4): bf16 205-230 GFLOP/s per core, f32 100-115 (the `gemm` crate ~98). With the
//! bias and the exact GELU fused into its epilogue, DA3-SMALL's linear layers run at 330-390
//! GFLOP/s in bf16 on two cores, where the `vdpbf16ps` kernel of our own that this replaced
//! ran them at 240-270 and oneMKL runs generic code on AMD (docs/benchmarks.md). f32 weights
//! come as plain `k×n` rows with a padded stride ([`super::linear::weight_layout`]), which
//! it reads in place: given the checkpoint's `(n, k)` rows it copied the whole weight into
//! its own layout on every call. For bf16/f16 no plain layout avoids the copy (the
//! `vdpbf16ps` / AMX layout interleaves pairs of rows): those weights are reordered once at
//! load into the layout its matmul picks ([`pack`], [`Packed`]).
//!
//! The library is loaded at run time (`dlopen`), not linked: `scripts/setup.sh` installs
//! PyPI's `onednn-cpu-gomp` wheel (oneDNN 3.2, GNU OpenMP threading, no other dependency
//! than `libgomp`) into `.venv/lib`, and `build.rs` records that path; `DA3_DNNL_LIB`
//! names another file; without the library the other kernels run (same values up to
//! rounding); [`version`] says whether it loaded, and why not (`da3 bench` prints it).
//!
//! Threading: like every kernel here, the callers split the work over rayon's pool and call
//! single-threaded; each calling thread sets its own OpenMP thread count to 1 once, so
//! oneDNN never starts a team of its own. Each thread keeps its primitives (one per operand
//! shape and stride) and rebinds the data pointers per call. A layout that only oneDNN's
//! reference code would run is declined (the caller's fallback runs instead).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::OnceLock;

use super::buffers::Mat;

mod conv;
mod pack;

pub(super) use conv::{conv_bf16_nhwc, conv_bf16_nhwc_to_bf16, ConvBand};
use pack::packed_md;
pub(super) use pack::{pack, Packed};

/// The element types of a matmul's inputs (the output is always f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Input {
    F32,
    Bf16,
    F16,
}

impl Input {
    fn dnnl(self) -> c_int {
        match self {
            Input::F16 => 1,
            Input::Bf16 => 2,
            Input::F32 => 3,
        }
    }
}

impl From<super::half::Half> for Input {
    fn from(h: super::half::Half) -> Input {
        match h {
            super::half::Half::Bf16 => Input::Bf16,
            super::half::Half::F16 => Input::F16,
        }
    }
}

/// An input operand of any element type (the type is [`matmul`]'s `input`).
pub(super) fn untyped<T>(a: Mat<*const T>) -> Mat<*const c_void> {
    Mat::strided(a.ptr.cast(), a.rs, a.cs)
}

type Status = c_int;
type Handle = *mut c_void;
type Dims = [i64; 12];

#[repr(C)]
struct ExecArg {
    arg: c_int,
    memory: Handle,
}

#[repr(C)]
struct Version {
    major: c_int,
    minor: c_int,
    patch: c_int,
    hash: *const c_char,
    cpu_runtime: u32,
    gpu_runtime: u32,
}

const ENGINE_CPU: c_int = 1;
const STREAM_IN_ORDER: u32 = 1;
const QUERY_IMPL_INFO_STR: c_int = 8;
// Also a reorder's `DNNL_ARG_FROM` and `DNNL_ARG_TO`.
const ARG_SRC: c_int = 1;
const ARG_DST: c_int = 17;
const ARG_WEIGHTS: c_int = 33;
const ARG_BIAS: c_int = 41;
const FORMAT_TAG_ANY: c_int = 1;
const QUERY_WEIGHTS_MD: c_int = 131;
const ELTWISE_GELU_ERF: c_int = 0x31;

/// What a matmul does to its product before storing it (fused into the kernel's epilogue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(super) struct Epilogue {
    /// Add what `dst` holds (residual or earlier partial sums).
    pub(super) accumulate: bool,
    /// Add a bias per output column (f32, `n` values).
    pub(super) bias: bool,
    /// Then the exact (erf) GELU.
    pub(super) gelu: bool,
}

/// The entry points used, from `oneapi/dnnl/dnnl.h` (3.x C API).
struct Api {
    engine: usize, // dnnl_engine_t, shared by every thread (thread-safe)
    omp_set_num_threads: unsafe extern "C" fn(c_int),
    version: String,
    stream_create: unsafe extern "C" fn(*mut Handle, Handle, u32) -> Status,
    md_create_with_strides:
        unsafe extern "C" fn(*mut Handle, c_int, *const Dims, c_int, *const Dims) -> Status,
    md_create_with_tag:
        unsafe extern "C" fn(*mut Handle, c_int, *const Dims, c_int, c_int) -> Status,
    md_clone: unsafe extern "C" fn(*mut Handle, Handle) -> Status,
    md_get_size: unsafe extern "C" fn(Handle) -> usize,
    md_destroy: unsafe extern "C" fn(Handle) -> Status,
    pd_query_md: unsafe extern "C" fn(Handle, c_int, c_int) -> Handle,
    reorder_pd_create:
        unsafe extern "C" fn(*mut Handle, Handle, Handle, Handle, Handle, Handle) -> Status,
    attr_create: unsafe extern "C" fn(*mut Handle) -> Status,
    attr_destroy: unsafe extern "C" fn(Handle) -> Status,
    attr_set_post_ops: unsafe extern "C" fn(Handle, Handle) -> Status,
    post_ops_create: unsafe extern "C" fn(*mut Handle) -> Status,
    post_ops_append_sum: unsafe extern "C" fn(Handle, f32, i32, c_int) -> Status,
    post_ops_append_eltwise: unsafe extern "C" fn(Handle, c_int, f32, f32) -> Status,
    post_ops_destroy: unsafe extern "C" fn(Handle) -> Status,
    matmul_pd_create:
        unsafe extern "C" fn(*mut Handle, Handle, Handle, Handle, Handle, Handle, Handle) -> Status,
    conv_pd_create: conv::PdCreate,
    pd_query: unsafe extern "C" fn(Handle, c_int, c_int, *mut c_void) -> Status,
    pd_destroy: unsafe extern "C" fn(Handle) -> Status,
    primitive_create: unsafe extern "C" fn(*mut Handle, Handle) -> Status,
    primitive_destroy: unsafe extern "C" fn(Handle) -> Status,
    memory_destroy: unsafe extern "C" fn(Handle) -> Status,
    primitive_execute: unsafe extern "C" fn(Handle, Handle, c_int, *const ExecArg) -> Status,
    memory_create: unsafe extern "C" fn(*mut Handle, Handle, Handle, *mut c_void) -> Status,
    memory_set_data_handle: unsafe extern "C" fn(Handle, *mut c_void) -> Status,
    stream_wait: unsafe extern "C" fn(Handle) -> Status,
    /// Input types with an optimised (not reference) kernel on this CPU, probed at load.
    runs: Vec<Input>,
}

// SAFETY: the engine handle is used read-only by every thread (oneDNN's engines are
// thread-safe); the rest are function pointers.
unsafe impl Send for Api {}
unsafe impl Sync for Api {}

/// Where `build.rs` found the library (`.venv/lib` after `scripts/setup.sh`), if it did.
const BUILD_PATH: Option<&str> = option_env!("DA3_DNNL_BUILD_PATH");

fn dlerror() -> String {
    // SAFETY: dlerror returns null or a C string valid until the next dl* call.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

unsafe fn sym<T: Copy>(lib: *mut c_void, name: &str) -> Result<T, String> {
    let c = CString::new(name).map_err(|e| e.to_string())?;
    let p = libc::dlsym(lib, c.as_ptr());
    if p.is_null() {
        return Err(format!("{name}: {}", dlerror()));
    }
    debug_assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
    Ok(std::mem::transmute_copy(&p))
}

/// The library file tried: `DA3_DNNL_LIB`, else the build's, else the loader's search path.
fn library_path() -> String {
    match std::env::var("DA3_DNNL_LIB") {
        Ok(p) if !p.is_empty() => p,
        _ => BUILD_PATH.unwrap_or("libdnnl.so.3").to_string(),
    }
}

fn load() -> Result<Api, String> {
    let path = library_path();
    let cpath = CString::new(path.clone()).map_err(|e| e.to_string())?;
    // SAFETY: plain dlopen/dlsym; the handle is never closed.
    unsafe {
        let lib = libc::dlopen(cpath.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if lib.is_null() {
            return Err(format!("{path}: {}", dlerror()));
        }
        // libdnnl's OpenMP runtime, loaded with it.
        let gomp_name = CString::new("libgomp.so.1").map_err(|e| e.to_string())?;
        let gomp = libc::dlopen(gomp_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
        if gomp.is_null() {
            return Err(format!(
                "{path} is not the GNU OpenMP build (onednn-cpu-gomp): libgomp not loaded"
            ));
        }
        let version: unsafe extern "C" fn() -> *const Version = sym(lib, "dnnl_version")?;
        let v = &*version();
        if v.major != 3 {
            return Err(format!(
                "{path}: oneDNN {}.{}, expected 3.x",
                v.major, v.minor
            ));
        }
        let engine_create: unsafe extern "C" fn(*mut Handle, c_int, usize) -> Status =
            sym(lib, "dnnl_engine_create")?;
        let mut engine: Handle = std::ptr::null_mut();
        if engine_create(&mut engine, ENGINE_CPU, 0) != 0 {
            return Err(format!("{path}: no CPU engine"));
        }
        let mut api = Api {
            engine: engine as usize,
            omp_set_num_threads: sym(gomp, "omp_set_num_threads")?,
            version: format!("oneDNN {}.{}.{}", v.major, v.minor, v.patch),
            stream_create: sym(lib, "dnnl_stream_create")?,
            md_create_with_strides: sym(lib, "dnnl_memory_desc_create_with_strides")?,
            md_create_with_tag: sym(lib, "dnnl_memory_desc_create_with_tag")?,
            md_clone: sym(lib, "dnnl_memory_desc_clone")?,
            md_get_size: sym(lib, "dnnl_memory_desc_get_size")?,
            md_destroy: sym(lib, "dnnl_memory_desc_destroy")?,
            pd_query_md: sym(lib, "dnnl_primitive_desc_query_md")?,
            reorder_pd_create: sym(lib, "dnnl_reorder_primitive_desc_create")?,
            attr_create: sym(lib, "dnnl_primitive_attr_create")?,
            attr_destroy: sym(lib, "dnnl_primitive_attr_destroy")?,
            attr_set_post_ops: sym(lib, "dnnl_primitive_attr_set_post_ops")?,
            post_ops_create: sym(lib, "dnnl_post_ops_create")?,
            post_ops_append_sum: sym(lib, "dnnl_post_ops_append_sum")?,
            post_ops_append_eltwise: sym(lib, "dnnl_post_ops_append_eltwise")?,
            post_ops_destroy: sym(lib, "dnnl_post_ops_destroy")?,
            matmul_pd_create: sym(lib, "dnnl_matmul_primitive_desc_create")?,
            conv_pd_create: sym(lib, "dnnl_convolution_forward_primitive_desc_create")?,
            pd_query: sym(lib, "dnnl_primitive_desc_query")?,
            pd_destroy: sym(lib, "dnnl_primitive_desc_destroy")?,
            primitive_create: sym(lib, "dnnl_primitive_create")?,
            primitive_destroy: sym(lib, "dnnl_primitive_destroy")?,
            memory_destroy: sym(lib, "dnnl_memory_destroy")?,
            primitive_execute: sym(lib, "dnnl_primitive_execute")?,
            memory_create: sym(lib, "dnnl_memory_create")?,
            memory_set_data_handle: sym(lib, "dnnl_memory_set_data_handle")?,
            stream_wait: sym(lib, "dnnl_stream_wait")?,
            runs: Vec::new(),
        };
        for input in [Input::F32, Input::Bf16, Input::F16] {
            let probe = Key {
                input,
                dims: (64, 64, 64),
                strides: [(64, 1), (1, 64), (64, 1)],
                packed: false,
                epilogue: Epilogue {
                    accumulate: true,
                    ..Default::default()
                },
            };
            if let Ok(Some(p)) = create(&api, &probe) {
                api.runs.push(input);
                destroy(&api, p);
            }
        }
        Ok(api)
    }
}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

fn api() -> Option<&'static Api> {
    API.get_or_init(|| {
        let r = load();
        if let Err(e) = &r {
            tracing::debug!("oneDNN not loaded: {e}");
        }
        r
    })
    .as_ref()
    .ok()
}

/// oneDNN's version when the library loads here ("oneDNN 3.2.0"), else why not.
pub fn version() -> Result<String, String> {
    API.get_or_init(load)
        .as_ref()
        .map(|a| a.version.clone())
        .map_err(|e| e.clone())
}

/// What runs the linear layers' GEMMs, for logs: oneDNN's version, or why not.
pub fn describe() -> String {
    match version() {
        Ok(v) if crate::tuning::get().dnnl => v,
        Ok(v) => format!("{v} (switched off: DA3_DNNL=0)"),
        Err(e) => format!("oneDNN not loaded ({e}): oneMKL / f32 kernels"),
    }
}

/// Whether oneDNN's kernels run: loaded and [`crate::tuning::Tuning::dnnl`] on.
pub fn enabled() -> bool {
    crate::tuning::get().dnnl && api().is_some()
}

/// Whether oneDNN runs bf16 GEMMs here with an optimised kernel (`runs`).
pub fn runs_bf16() -> bool {
    runs(Input::Bf16)
}

/// Whether oneDNN runs `input` GEMMs here with an optimised kernel (loaded, switched on, and
/// not only its reference code for this type on this CPU: f16 needs AVX512-FP16 or AMX-FP16).
pub(super) fn runs(input: Input) -> bool {
    crate::tuning::get().dnnl && api().is_some_and(|a| a.runs.contains(&input))
}

/// One cached matmul: the primitive and its memory objects (src, weights, dst, bias;
/// pointers bound per call).
struct Prim {
    prim: Handle,
    mem: [Handle; 4],
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    input: Input,
    dims: (usize, usize, usize),
    /// Of src, weights, dst; the weights' are unused when `packed`.
    strides: [(isize, isize); 3],
    /// The weights in the layout of [`packed_md`] ([`Packed`]).
    packed: bool,
    epilogue: Epilogue,
}

struct ThreadState {
    stream: Handle,
    /// `None`: oneDNN offered only its reference code for this key (declined).
    prims: HashMap<Key, Option<Prim>>,
    /// The convolutions' ([`conv`]), with their weights reordered in.
    convs: HashMap<conv::Key, Option<Prim>>,
}

/// Primitives one thread keeps (a DA3-GIANT forward needs a few hundred).
const MAX_PRIMITIVES: usize = 2048;

thread_local! {
    static STATE: RefCell<Option<ThreadState>> = const { RefCell::new(None) };
}

/// Free a primitive and its memory objects.
unsafe fn destroy(api: &Api, p: Prim) {
    (api.primitive_destroy)(p.prim);
    for m in p.mem.into_iter().filter(|m| !m.is_null()) {
        (api.memory_destroy)(m);
    }
}

/// A 2-D memory desc of `rows × cols` values of type `dt`, with strides `(row, column)`, or
/// `None`: the layout left to the primitive (`format_tag::any`). The caller destroys it.
unsafe fn md_2d(
    api: &Api,
    (rows, cols): (usize, usize),
    dt: c_int,
    strides: Option<(isize, isize)>,
) -> Result<Handle, String> {
    let mut d: Dims = [0; 12];
    d[0] = rows as i64;
    d[1] = cols as i64;
    let mut h: Handle = std::ptr::null_mut();
    let s = match strides {
        Some((rs, cs)) => {
            let mut st: Dims = [0; 12];
            st[0] = rs as i64;
            st[1] = cs as i64;
            (api.md_create_with_strides)(&mut h, 2, &d, dt, &st)
        }
        None => (api.md_create_with_tag)(&mut h, 2, &d, dt, FORMAT_TAG_ANY),
    };
    if s == 0 {
        Ok(h)
    } else {
        Err(format!("oneDNN memory desc: status {s}"))
    }
}

/// Whether the primitive desc `pd` runs optimised code, not oneDNN's reference code.
unsafe fn optimised(api: &Api, pd: Handle) -> bool {
    let mut info: *const c_char = std::ptr::null();
    let info_ptr = (&mut info as *mut *const c_char).cast();
    (api.pd_query)(pd, QUERY_IMPL_INFO_STR, 0, info_ptr) == 0
        && !info.is_null()
        && !CStr::from_ptr(info).to_bytes().starts_with(b"ref")
}

/// Build the primitive for `key`; `Ok(None)` when only a reference implementation exists.
unsafe fn create(api: &Api, key: &Key) -> Result<Option<Prim>, String> {
    let (m, n, k) = key.dims;
    let dt = key.input.dnnl();
    let engine = api.engine as Handle;
    let ck = |s: Status, what: &str| {
        if s == 0 {
            Ok(())
        } else {
            Err(format!("oneDNN {what}: status {s}"))
        }
    };
    let md = |rows: usize, cols: usize, strides: (isize, isize), dt: c_int| {
        md_2d(api, (rows, cols), dt, Some(strides))
    };
    let [sd, ws, dd] = key.strides;
    let src = md(m, k, sd, dt)?;
    let wei = if key.packed {
        match packed_md(api, key.input, n, k)? {
            Some(w) => w,
            None => {
                (api.md_destroy)(src);
                return Ok(None);
            }
        }
    } else {
        md(k, n, ws, dt)?
    };
    let dst = md(m, n, dd, 3)?;
    let ep = key.epilogue;
    let bias = if ep.bias {
        md(1, n, (n as isize, 1), 3)?
    } else {
        std::ptr::null_mut()
    };
    let mut attr: Handle = std::ptr::null_mut();
    ck((api.attr_create)(&mut attr), "attr")?;
    if ep.accumulate || ep.gelu {
        let mut po: Handle = std::ptr::null_mut();
        ck((api.post_ops_create)(&mut po), "post-ops")?;
        if ep.accumulate {
            ck((api.post_ops_append_sum)(po, 1.0, 0, 0), "sum post-op")?;
        }
        if ep.gelu {
            let s = (api.post_ops_append_eltwise)(po, ELTWISE_GELU_ERF, 0.0, 0.0);
            ck(s, "gelu post-op")?;
        }
        ck((api.attr_set_post_ops)(attr, po), "set post-ops")?;
        (api.post_ops_destroy)(po);
    }
    let mut pd: Handle = std::ptr::null_mut();
    let s = (api.matmul_pd_create)(&mut pd, engine, src, wei, bias, dst, attr);
    (api.attr_destroy)(attr);
    let result = if s != 0 {
        Ok(None) // unimplemented for these types / layouts here
    } else {
        let r = if !optimised(api, pd) {
            Ok(None)
        } else {
            let mut prim: Handle = std::ptr::null_mut();
            ck((api.primitive_create)(&mut prim, pd), "primitive")?;
            let mut mem = [std::ptr::null_mut(); 4];
            for (h, d) in mem.iter_mut().zip([src, wei, dst, bias]) {
                if !d.is_null() {
                    let s = (api.memory_create)(h, d, engine, std::ptr::null_mut());
                    ck(s, "memory")?;
                }
            }
            Ok(Some(Prim { prim, mem }))
        };
        (api.pd_destroy)(pd);
        r
    };
    for d in [src, wei, dst, bias] {
        if !d.is_null() {
            (api.md_destroy)(d);
        }
    }
    result
}

/// Reorder the values at `from` (desc `from_md`) into the memory object `to` (desc
/// `to_md`) on `stream`: weights into the layout a primitive reads ([`pack`], [`conv`]).
unsafe fn reorder(
    api: &Api,
    stream: Handle,
    (from_md, from): (Handle, *const c_void),
    (to_md, to): (Handle, Handle),
) -> bool {
    let engine = api.engine as Handle;
    let null = std::ptr::null_mut();
    let (mut pd, mut prim, mut src): (Handle, Handle, Handle) = (null, null, null);
    let ok = (api.reorder_pd_create)(&mut pd, from_md, engine, to_md, engine, null) == 0
        && (api.primitive_create)(&mut prim, pd) == 0
        && (api.memory_create)(&mut src, from_md, engine, from as *mut c_void) == 0
        && {
            let args = [
                ExecArg {
                    arg: ARG_SRC,
                    memory: src,
                },
                ExecArg {
                    arg: ARG_DST,
                    memory: to,
                },
            ];
            (api.primitive_execute)(prim, stream, 2, args.as_ptr()) == 0
                && (api.stream_wait)(stream) == 0
        };
    if !src.is_null() {
        (api.memory_destroy)(src);
    }
    if !prim.is_null() {
        (api.primitive_destroy)(prim);
    }
    if !pd.is_null() {
        (api.pd_destroy)(pd);
    }
    ok
}

/// The right-hand operand of a matmul: strided, or packed weights ([`Packed`]).
#[derive(Clone, Copy)]
pub(super) enum Rhs<'a> {
    Strided(Mat<*const c_void>),
    Packed(&'a Packed),
}

/// Run `f` with this thread's state: its stream and primitives (made, with the thread's
/// OpenMP count set to 1, on its first call); false when the stream cannot be made.
fn with_state(api: &Api, f: impl FnOnce(&mut ThreadState) -> bool) -> bool {
    STATE.with(|st| {
        let mut st = st.borrow_mut();
        if st.is_none() {
            *st = new_state(api);
        }
        st.as_mut().is_some_and(f)
    })
}

/// A thread's oneDNN state: its stream, no primitives yet.
fn new_state(api: &Api) -> Option<ThreadState> {
    // SAFETY: plain oneDNN / OpenMP calls on this thread.
    unsafe {
        (api.omp_set_num_threads)(1);
        let mut stream: Handle = std::ptr::null_mut();
        if (api.stream_create)(&mut stream, api.engine as Handle, STREAM_IN_ORDER) != 0 {
            return None;
        }
        Some(ThreadState {
            stream,
            prims: HashMap::new(),
            convs: HashMap::new(),
        })
    }
}

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)`, inputs of type `input` (bf16/f16 as raw
/// bits), f32 accumulation and output, on the calling thread only. Returns false, having
/// done nothing, when oneDNN is not loaded or off, or has no optimised kernel for these
/// types and strides here (then the caller's other kernel runs).
///
/// # Safety
/// Every operand must be valid for its strides over its dims (`lhs` m×k, `rhs` k×n, `dst`
/// m×n writable), `dst` not aliasing the inputs; the element type of `lhs`/`rhs` is `input`.
pub(super) unsafe fn matmul(
    input: Input,
    dims: (usize, usize, usize),
    dst: Mat<*mut f32>,
    accumulate: bool,
    lhs: Mat<*const c_void>,
    rhs: Mat<*const c_void>,
) -> bool {
    let ep = Epilogue {
        accumulate,
        ..Default::default()
    };
    matmul_ext(input, dims, dst, ep, None, lhs, Rhs::Strided(rhs))
}

/// [`matmul`] with an epilogue: `dst = [gelu]([dst +] lhs · rhs [+ bias])`, `bias` (n
/// values) given exactly when `epilogue.bias`.
///
/// # Safety
/// As [`matmul`]; `bias` holds `n` values.
pub(super) unsafe fn matmul_ext(
    input: Input,
    (m, n, k): (usize, usize, usize),
    dst: Mat<*mut f32>,
    epilogue: Epilogue,
    bias: Option<&[f32]>,
    lhs: Mat<*const c_void>,
    rhs: Rhs<'_>,
) -> bool {
    #[cfg(test)]
    if DECLINE.with(|d| d.get()) {
        return false;
    }
    let (rhs_ptr, rhs_strides, packed) = match rhs {
        Rhs::Strided(r) => (r.ptr, (r.rs, r.cs), false),
        Rhs::Packed(p) => {
            if (p.input, p.n, p.k) != (input, n, k) {
                return false;
            }
            (p.buf as *const c_void, (0, 0), true)
        }
    };
    if epilogue.bias != bias.is_some_and(|b| b.len() >= n) {
        return false;
    }
    if m == 0 || n == 0 || k == 0 || !crate::tuning::get().dnnl {
        return false;
    }
    let Some(api) = api() else {
        return false;
    };
    let key = Key {
        input,
        dims: (m, n, k),
        strides: [(lhs.rs, lhs.cs), rhs_strides, (dst.rs, dst.cs)],
        packed,
        epilogue,
    };
    with_state(api, |state| {
        let stream = state.stream;
        let entry = match state.prims.get(&key) {
            Some(e) => e,
            None => {
                if state.prims.len() >= MAX_PRIMITIVES {
                    // Shapes keep changing (input sizes): start over rather than grow.
                    for p in state.prims.drain().filter_map(|(_, p)| p) {
                        destroy(api, p);
                    }
                }
                let p = match create(api, &key) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!("{e}; this GEMM shape falls back to the other kernels");
                        None
                    }
                };
                state.prims.entry(key).or_insert(p)
            }
        };
        let Some(p) = entry else {
            return false;
        };
        let bias_ptr = bias.map_or(std::ptr::null_mut(), |b| b.as_ptr() as *mut c_void);
        for (mem, ptr) in p.mem.iter().zip([
            lhs.ptr as *mut c_void,
            rhs_ptr as *mut c_void,
            dst.ptr as *mut c_void,
            bias_ptr,
        ]) {
            if !mem.is_null() && (api.memory_set_data_handle)(*mem, ptr) != 0 {
                return false;
            }
        }
        let nargs = if epilogue.bias { 4 } else { 3 };
        let kinds = [ARG_SRC, ARG_WEIGHTS, ARG_DST, ARG_BIAS];
        let args: [ExecArg; 4] = std::array::from_fn(|i| ExecArg {
            arg: kinds[i],
            memory: p.mem[i],
        });
        (api.primitive_execute)(p.prim, stream, nargs, args.as_ptr()) == 0
            && (api.stream_wait)(stream) == 0
    })
}

#[cfg(test)]
thread_local! {
    static DECLINE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Tests: a pool of 2 threads on which every matmul declines, as where oneDNN has no
/// optimised kernel for a shape (the callers' fallbacks then run).
#[cfg(test)]
pub(super) fn declining_pool() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .start_handler(|_| DECLINE.with(|d| d.set(true)))
        .build()
        .expect("a thread pool")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn widen(input: Input, b: u16) -> f64 {
        let kind = match input {
            Input::Bf16 => super::super::half::Half::Bf16,
            Input::F16 => super::super::half::Half::F16,
            Input::F32 => unreachable!(),
        };
        kind.widen(b) as f64
    }

    /// Whether the library loaded; a test is skipped where it is absent, and fails where the
    /// build found it but it does not load.
    pub(super) fn loaded() -> bool {
        match version() {
            Ok(_) => true,
            Err(e) => {
                assert!(
                    BUILD_PATH.is_none(),
                    "oneDNN found at build time but not loaded: {e}"
                );
                eprintln!("oneDNN not loaded ({e}): skipped");
                false
            }
        }
    }

    /// Seeded values of `n` elements in [-1, 1).
    pub(super) fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::testing::rand(&[n], seed)
            .to_vec1()
            .expect("host values")
    }

    /// f32 and bf16 products against f64 sums of the same (rounded) values, with strided
    /// and transposed operands and accumulation; skipped where the library is absent.
    #[test]
    fn matmul_equals_f64_products() {
        if !loaded() {
            return;
        }
        let (m, n, k) = (37usize, 29usize, 70usize);
        let (x, w) = (values(m * k, 1), values(n * k, 2));
        let ldd = n + 3;
        for accumulate in [false, true] {
            // f32, weights as (n×k) row-major read transposed.
            let mut out = vec![1.0f32; m * ldd];
            let ok = unsafe {
                matmul(
                    Input::F32,
                    (m, n, k),
                    Mat::rows(out.as_mut_ptr(), ldd),
                    accumulate,
                    untyped(Mat::rows(x.as_ptr(), k)),
                    untyped(Mat::cols(w.as_ptr(), k)),
                )
            };
            assert!(ok, "f32 matmul declined");
            let base = if accumulate { 1.0 } else { 0.0 };
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = base
                        + (0..k)
                            .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                            .sum::<f64>();
                    let got = out[i * ldd + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "f32 ({i},{j})"
                    );
                }
                for j in n..ldd {
                    assert_eq!(out[i * ldd + j], 1.0, "wrote past n");
                }
            }
            // bf16 (f16 only where the CPU has an optimised kernel, else declined).
            for input in [Input::Bf16, Input::F16] {
                let round = |v: &[f32]| -> Vec<u16> {
                    v.iter()
                        .map(|&f| match input {
                            Input::Bf16 => half::bf16::from_f32(f).to_bits(),
                            _ => half::f16::from_f32(f).to_bits(),
                        })
                        .collect()
                };
                let (xh, wh) = (round(&x), round(&w));
                let mut out = vec![1.0f32; m * ldd];
                let ok = unsafe {
                    matmul(
                        input,
                        (m, n, k),
                        Mat::rows(out.as_mut_ptr(), ldd),
                        accumulate,
                        untyped(Mat::rows(xh.as_ptr(), k)),
                        untyped(Mat::cols(wh.as_ptr(), k)),
                    )
                };
                if !ok {
                    // Declined only where the CPU has no kernel for the type (the probe at
                    // load agrees); CPUs with AVX512-BF16 or AMX have one for bf16.
                    assert!(
                        !runs(input),
                        "{input:?} matmul declined after the probe took it"
                    );
                    let bf16_hw = crate::device::cpu_bf16() != crate::device::CpuBf16::None;
                    assert!(
                        input == Input::F16 || !bf16_hw,
                        "bf16 declined on a bf16 CPU"
                    );
                    continue;
                }
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = base
                            + (0..k)
                                .map(|p| widen(input, xh[i * k + p]) * widen(input, wh[j * k + p]))
                                .sum::<f64>();
                        let got = out[i * ldd + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{input:?} ({i},{j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// The fused bias + GELU epilogue equals the product, then the bias, then our exact GELU.
    #[test]
    fn epilogue_equals_separate_bias_and_gelu() {
        if !loaded() {
            return;
        }
        let (m, n, k) = (33usize, 40usize, 24usize);
        let (x, w, bias) = (values(m * k, 3), values(n * k, 4), values(n, 5));
        let (a, b) = (
            untyped(Mat::rows(x.as_ptr(), k)),
            untyped(Mat::cols(w.as_ptr(), k)),
        );
        let mut want = vec![0f32; m * n];
        assert!(unsafe {
            matmul(
                Input::F32,
                (m, n, k),
                Mat::rows(want.as_mut_ptr(), n),
                false,
                a,
                b,
            )
        });
        for row in want.chunks_mut(n) {
            row.iter_mut().zip(&bias).for_each(|(y, b)| *y += b);
        }
        super::super::simd::gelu_inplace(&mut want);
        let mut got = vec![f32::NAN; m * n];
        let ep = Epilogue {
            accumulate: false,
            bias: true,
            gelu: true,
        };
        let dst = Mat::rows(got.as_mut_ptr(), n);
        assert!(unsafe {
            matmul_ext(
                Input::F32,
                (m, n, k),
                dst,
                ep,
                Some(&bias),
                a,
                Rhs::Strided(b),
            )
        });
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{i}: {g} vs {w}");
        }
        // A bias promised but not given (or too short) is declined, not read.
        assert!(!unsafe { matmul_ext(Input::F32, (m, n, k), dst, ep, None, a, Rhs::Strided(b)) });
        assert!(!unsafe {
            matmul_ext(
                Input::F32,
                (m, n, k),
                dst,
                ep,
                Some(&bias[..3]),
                a,
                Rhs::Strided(b),
            )
        });
    }
}
