//! oneDNN's convolution: bf16 inputs and weights, f32 accumulation and output, channels last
//! (NHWC), stride 1, one band of output rows per call. On CPUs with AVX512-BF16 its
//! `brgconv` kernels run `vdpbf16ps`, on Xeons with AMX the AMX tiles; channels last is the
//! layout those kernels read (channels-first bf16 has only its im2col + GEMM code, which
//! measured slower than our f32 Winograd, docs/benchmarks.md, session 16).
//!
//! The caller passes the layer's f32 weights (`co × ci × k × k`, as the checkpoint stores
//! them) with every call; each thread reorders them once into the layout the primitive
//! picked, when it builds the primitive for a band shape, and keeps both (a layer's band
//! shapes are few: first, middle and last band). Keys name the layer by a number of its own
//! ([`super::super::head::HalfConv`]), never by an address that a later model could reuse.

use std::collections::hash_map::Entry;
use std::ffi::{c_char, c_int, c_void, CStr};

use super::{
    api, destroy, reorder, with_state, Api, Dims, ExecArg, Handle, Prim, Status, ARG_BIAS, ARG_DST,
    ARG_SRC, ARG_WEIGHTS, FORMAT_TAG_ANY, MAX_PRIMITIVES, QUERY_IMPL_INFO_STR, QUERY_WEIGHTS_MD,
};

/// `dnnl_convolution_forward_primitive_desc_create`.
pub(super) type PdCreate = unsafe extern "C" fn(
    *mut Handle,
    Handle,
    c_int,
    c_int,
    Handle,
    Handle,
    Handle,
    Handle,
    *const Dims,
    *const Dims,
    *const Dims,
    *const Dims,
    Handle,
) -> Status;

const FORWARD_INFERENCE: c_int = 96;
const CONVOLUTION_DIRECT: c_int = 1;
const ELTWISE_RELU: c_int = 0x20;
const BF16: c_int = 2;
const F32: c_int = 3;
/// `DNNL_MEMORY_ALLOCATE`: the library allocates the memory object's buffer.
const ALLOCATE: *mut c_void = usize::MAX as *mut c_void;

/// One call's shape: a band of an NHWC map convolved with a square kernel, stride 1.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(in crate::model::cpu) struct ConvBand {
    /// Input channels, output channels, kernel size.
    pub(in crate::model::cpu) ci: usize,
    pub(in crate::model::cpu) co: usize,
    pub(in crate::model::cpu) k: usize,
    /// Rows and columns of the input band (its halo rows included).
    pub(in crate::model::cpu) rows: usize,
    pub(in crate::model::cpu) cols: usize,
    /// Zero padding: top, bottom, and left = right.
    pub(in crate::model::cpu) pad: (usize, usize, usize),
    /// ReLU of the output (after the bias).
    pub(in crate::model::cpu) relu: bool,
    /// The output in bf16 (bits) rather than f32: set by [`conv_bf16_nhwc_to_bf16`].
    bf16_out: bool,
}

impl ConvBand {
    /// The band of a same-padded 3x3 that makes output rows `r0..r1` of an `h × w` map:
    /// its input rows `(s0, s1)` (the halo rows that exist) and its shape.
    pub(in crate::model::cpu) fn same_3x3(
        (ci, co): (usize, usize),
        (r0, r1): (usize, usize),
        (h, w): (usize, usize),
        relu: bool,
    ) -> ((usize, usize), ConvBand) {
        let (s0, s1) = (r0.saturating_sub(1), (r1 + 1).min(h));
        let band = ConvBand {
            ci,
            co,
            k: 3,
            rows: s1 - s0,
            cols: w,
            pad: (usize::from(r0 == 0), usize::from(r1 == h), 1),
            relu,
            bf16_out: false,
        };
        debug_assert_eq!(band.out_rows(), r1 - r0);
        ((s0, s1), band)
    }

    /// Output rows of the band.
    pub(in crate::model::cpu) fn out_rows(&self) -> usize {
        (self.rows + self.pad.0 + self.pad.1 + 1).saturating_sub(self.k)
    }

    /// Output columns.
    pub(in crate::model::cpu) fn out_cols(&self) -> usize {
        (self.cols + 2 * self.pad.2 + 1).saturating_sub(self.k)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Key {
    layer: u64,
    band: ConvBand,
}

/// A 4-D (1, c, h, w) memory desc with NHWC strides (the caller destroys it).
unsafe fn md_nhwc(api: &Api, (c, h, w): (usize, usize, usize), dt: c_int) -> Option<Handle> {
    let mut d: Dims = [0; 12];
    let mut st: Dims = [0; 12];
    d[..4].copy_from_slice(&[1, c as i64, h as i64, w as i64]);
    st[..4].copy_from_slice(&[(h * w * c) as i64, 1, (w * c) as i64, c as i64]);
    let mut m: Handle = std::ptr::null_mut();
    ((api.md_create_with_strides)(&mut m, 4, &d, dt, &st) == 0).then_some(m)
}

/// The implementation oneDNN picked for `pd` ("brgconv:avx512_core_bf16", ...).
unsafe fn impl_name(api: &Api, pd: Handle) -> String {
    let mut info: *const c_char = std::ptr::null();
    let ok = (api.pd_query)(
        pd,
        QUERY_IMPL_INFO_STR,
        0,
        (&mut info as *mut *const c_char).cast(),
    );
    if ok == 0 && !info.is_null() {
        CStr::from_ptr(info).to_string_lossy().into_owned()
    } else {
        String::new()
    }
}

/// Build the primitive for `band` and reorder `weight` (f32, co × ci × k × k) into it;
/// `Ok(None)` where oneDNN has no JIT kernel for it here (its reference code, or its im2col
/// + GEMM one, would be slower than the f32 kernels).
unsafe fn create(
    api: &Api,
    stream: Handle,
    band: &ConvBand,
    weight: &[f32],
) -> Result<Option<Prim>, String> {
    let engine = api.engine as Handle;
    let (ci, co, k) = (band.ci, band.co, band.k);
    let mut mds: Vec<Handle> = Vec::new();
    let result = (|| {
        let src = md_nhwc(api, (ci, band.rows, band.cols), BF16).ok_or("src desc")?;
        mds.push(src);
        let dst_type = if band.bf16_out { BF16 } else { F32 };
        let dst = md_nhwc(api, (co, band.out_rows(), band.out_cols()), dst_type);
        let dst = dst.ok_or("dst desc")?;
        mds.push(dst);
        let mut wd: Dims = [0; 12];
        wd[..4].copy_from_slice(&[co as i64, ci as i64, k as i64, k as i64]);
        let mut wei: Handle = std::ptr::null_mut();
        if (api.md_create_with_tag)(&mut wei, 4, &wd, BF16, FORMAT_TAG_ANY) != 0 {
            return Err("weights desc".to_string());
        }
        mds.push(wei);
        let mut user: Handle = std::ptr::null_mut();
        let mut us: Dims = [0; 12];
        us[..4].copy_from_slice(&[(ci * k * k) as i64, (k * k) as i64, k as i64, 1]);
        if (api.md_create_with_strides)(&mut user, 4, &wd, F32, &us) != 0 {
            return Err("user weights desc".to_string());
        }
        mds.push(user);
        let mut bias: Handle = std::ptr::null_mut();
        let (mut bd, mut bs): (Dims, Dims) = ([0; 12], [0; 12]);
        bd[0] = co as i64;
        bs[0] = 1;
        if (api.md_create_with_strides)(&mut bias, 1, &bd, F32, &bs) != 0 {
            return Err("bias desc".to_string());
        }
        mds.push(bias);
        let mut attr: Handle = std::ptr::null_mut();
        if (api.attr_create)(&mut attr) != 0 {
            return Err("attr".to_string());
        }
        if band.relu {
            let mut po: Handle = std::ptr::null_mut();
            let ok = (api.post_ops_create)(&mut po) == 0
                && (api.post_ops_append_eltwise)(po, ELTWISE_RELU, 0.0, 0.0) == 0
                && (api.attr_set_post_ops)(attr, po) == 0;
            if !po.is_null() {
                (api.post_ops_destroy)(po);
            }
            if !ok {
                (api.attr_destroy)(attr);
                return Err("relu post-op".to_string());
            }
        }
        let dims2 = |a: usize, b: usize| {
            let mut d: Dims = [0; 12];
            d[0] = a as i64;
            d[1] = b as i64;
            d
        };
        let (strides, dilates) = (dims2(1, 1), dims2(0, 0));
        let (pl, pr) = (dims2(band.pad.0, band.pad.2), dims2(band.pad.1, band.pad.2));
        let mut pd: Handle = std::ptr::null_mut();
        let s = (api.conv_pd_create)(
            &mut pd,
            engine,
            FORWARD_INFERENCE,
            CONVOLUTION_DIRECT,
            src,
            wei,
            bias,
            dst,
            &strides,
            &dilates,
            &pl,
            &pr,
            attr,
        );
        (api.attr_destroy)(attr);
        if s != 0 {
            return Ok(None);
        }
        let name = impl_name(api, pd);
        if !(name.starts_with("brg") || name.starts_with("jit")) {
            tracing::debug!("oneDNN bf16 convolution {band:?}: {name}, declined");
            (api.pd_destroy)(pd);
            return Ok(None);
        }
        let mut prim: Handle = std::ptr::null_mut();
        let mut mem: [Handle; 4] = [std::ptr::null_mut(); 4];
        let packed = (api.pd_query_md)(pd, QUERY_WEIGHTS_MD, 0);
        let mut ok = !packed.is_null()
            && (api.primitive_create)(&mut prim, pd) == 0
            && (api.memory_create)(&mut mem[0], src, engine, std::ptr::null_mut()) == 0
            && (api.memory_create)(&mut mem[1], packed, engine, ALLOCATE) == 0
            && (api.memory_create)(&mut mem[2], dst, engine, std::ptr::null_mut()) == 0
            && (api.memory_create)(&mut mem[3], bias, engine, std::ptr::null_mut()) == 0;
        if ok {
            ok = reorder(
                api,
                stream,
                (user, weight.as_ptr().cast()),
                (packed, mem[1]),
            );
        }
        (api.pd_destroy)(pd);
        let p = Prim { prim, mem };
        if ok {
            Ok(Some(p))
        } else {
            if !p.prim.is_null() {
                destroy(api, p);
            }
            Err("oneDNN bf16 convolution: primitive or weights".to_string())
        }
    })();
    for m in mds {
        (api.md_destroy)(m);
    }
    result
}

/// `dst = [relu](conv(src, weight) + bias)` for one band on the calling thread: `src` bf16
/// bits, NHWC, `band.rows × band.cols × ci`; `dst` f32, NHWC, out_rows × out_cols × co;
/// `weight` f32 (co, ci, k, k); `bias` co values; `layer` names the weights (the same
/// number always with the same values). False, having done nothing, where oneDNN is not
/// loaded or off, or has no JIT kernel for this here (the caller's other kernel runs).
///
/// # Safety
/// `src` and `dst` valid for the sizes above, not overlapping.
pub(in crate::model::cpu) unsafe fn conv_bf16_nhwc(
    layer: u64,
    band: &ConvBand,
    weight: &[f32],
    bias: &[f32],
    src: *const u16,
    dst: *mut f32,
) -> bool {
    let band = ConvBand {
        bf16_out: false,
        ..*band
    };
    run(layer, &band, (weight, bias), src, dst.cast())
}

/// [`conv_bf16_nhwc`] with the output rounded to bf16 (bits) by oneDNN: for a map whose
/// only reader is another bf16 convolution.
///
/// # Safety
/// As [`conv_bf16_nhwc`], `dst` holding out_rows × out_cols × co bf16 values.
pub(in crate::model::cpu) unsafe fn conv_bf16_nhwc_to_bf16(
    layer: u64,
    band: &ConvBand,
    weight: &[f32],
    bias: &[f32],
    src: *const u16,
    dst: *mut u16,
) -> bool {
    let band = ConvBand {
        bf16_out: true,
        ..*band
    };
    run(layer, &band, (weight, bias), src, dst.cast())
}

/// Both of the above; `dst` of the type `band.bf16_out` says.
unsafe fn run(
    layer: u64,
    band: &ConvBand,
    (weight, bias): (&[f32], &[f32]),
    src: *const u16,
    dst: *mut c_void,
) -> bool {
    let (ci, co, k) = (band.ci, band.co, band.k);
    if weight.len() != co * ci * k * k || bias.len() != co || band.out_rows() == 0 {
        return false;
    }
    if band.out_cols() == 0 || !crate::tuning::get().dnnl {
        return false;
    }
    let Some(api) = api() else {
        return false;
    };
    let key = Key { layer, band: *band };
    with_state(api, |state| {
        let stream = state.stream;
        if state.convs.len() >= MAX_PRIMITIVES && !state.convs.contains_key(&key) {
            for p in state.convs.drain().filter_map(|(_, p)| p) {
                destroy(api, p);
            }
        }
        let entry = match state.convs.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(match create(api, stream, band, weight) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("{e}; this convolution runs in f32");
                    None
                }
            }),
        };
        let Some(p) = entry else {
            return false;
        };
        for (i, ptr) in [
            (0, src as *mut c_void),
            (2, dst),
            (3, bias.as_ptr() as *mut c_void),
        ] {
            if (api.memory_set_data_handle)(p.mem[i], ptr) != 0 {
                return false;
            }
        }
        let kinds = [ARG_SRC, ARG_WEIGHTS, ARG_DST, ARG_BIAS];
        let args: [ExecArg; 4] = std::array::from_fn(|i| ExecArg {
            arg: kinds[i],
            memory: p.mem[i],
        });
        (api.primitive_execute)(p.prim, stream, 4, args.as_ptr()) == 0
            && (api.stream_wait)(stream) == 0
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{loaded, values};
    use super::*;
    use crate::model::cpu::half::Half;

    /// Each band shape (first, middle, last, whole map) with and without the ReLU, against
    /// f64 sums of the same bf16-rounded inputs and weights; a CPU where oneDNN has no JIT
    /// bf16 convolution must decline.
    #[test]
    fn conv_bands_equal_f64_sums() {
        if !loaded() {
            return;
        }
        let (ci, co, k, cols) = (16usize, 24usize, 3usize, 11usize);
        let round = |v: &[f32]| -> Vec<f32> {
            let mut b = vec![0u16; v.len()];
            Half::Bf16.round_into(v, &mut b);
            b.iter().map(|&x| Half::Bf16.widen(x)).collect()
        };
        let w = values(co * ci * k * k, 31);
        let bias = values(co, 32);
        let wr = round(&w);
        for (rows, pad, relu) in [
            (6usize, (1usize, 0usize, 1usize), false),
            (7, (0, 0, 1), true),
            (6, (0, 1, 1), false),
            (5, (1, 1, 1), true),
        ] {
            let band = ConvBand {
                ci,
                co,
                k,
                rows,
                cols,
                pad,
                relu,
                bf16_out: false,
            };
            let x = values(rows * cols * ci, 33 + rows as u64);
            let mut xb = vec![0u16; x.len()];
            Half::Bf16.round_into(&x, &mut xb);
            let xr: Vec<f32> = xb.iter().map(|&b| Half::Bf16.widen(b)).collect();
            let (oh, ow) = (band.out_rows(), band.out_cols());
            let mut out = vec![f32::NAN; oh * ow * co];
            // SAFETY: sizes as documented.
            let ok = unsafe { conv_bf16_nhwc(7, &band, &w, &bias, xb.as_ptr(), out.as_mut_ptr()) };
            if !ok {
                assert!(
                    !super::super::runs_bf16(),
                    "bf16 matmul runs here, bf16 conv declined"
                );
                eprintln!("no JIT bf16 convolution here: declined");
                return;
            }
            for y in 0..oh {
                for x0 in 0..ow {
                    for o in 0..co {
                        let mut s = bias[o] as f64;
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (y + ky) as isize - pad.0 as isize;
                                let ix = (x0 + kx) as isize - pad.2 as isize;
                                if iy < 0 || ix < 0 || iy >= rows as isize || ix >= cols as isize {
                                    continue;
                                }
                                for c in 0..ci {
                                    let xv = xr[(iy as usize * cols + ix as usize) * ci + c];
                                    let wv = wr[((o * ci + c) * k + ky) * k + kx];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                        if relu {
                            s = s.max(0.0);
                        }
                        let got = out[(y * ow + x0) * co + o] as f64;
                        assert!(
                            (got - s).abs() < 1e-4,
                            "{band:?} ({y},{x0},{o}): {got} vs {s}"
                        );
                    }
                }
            }
            // The same band with a bf16 output: the f32 results rounded (within one bf16
            // step, where oneDNN's sums for that primitive round differently).
            let mut out16 = vec![0u16; oh * ow * co];
            // SAFETY: sizes as documented.
            let ok = unsafe {
                conv_bf16_nhwc_to_bf16(7, &band, &w, &bias, xb.as_ptr(), out16.as_mut_ptr())
            };
            assert!(ok, "{band:?}: bf16 output declined where f32 output ran");
            for (i, (&g, &f)) in out16.iter().zip(&out).enumerate() {
                let g = Half::Bf16.widen(g);
                assert!(
                    (g - f).abs() <= f.abs() / 128.0 + 1e-6,
                    "{band:?} [{i}]: bf16 {g} vs f32 {f}"
                );
            }
        }
    }
}
