//! Every bad input gets a typed error that names the problem; nothing panics.

use lowbit::format::quant_state::QuantStateJson;
use lowbit::format::{Absmax, FourBitType};
use lowbit::ops::{Linear8bitLt, ensure_finite};
use lowbit::tensor::{DType, FloatVec, Tensor, TensorData};
use lowbit::{Device, Error};

fn t(shape: Vec<usize>) -> Tensor {
    let n = shape.iter().product::<usize>();
    Tensor::f32(shape, (0..n).map(|i| (i as f32 * 0.37).sin()).collect()).unwrap()
}

#[test]
fn block_size_not_allowed() {
    let dev = Device::cpu();
    let e = dev
        .quantize_4bit(&t(vec![100]), FourBitType::Nf4, 48, false)
        .unwrap_err();
    assert!(matches!(e, Error::BlockSize { got: 48, .. }), "{e}");
    assert!(
        e.to_string().contains("32, 64, 128"),
        "message lists the allowed sizes: {e}"
    );
    let e = dev.quantize_blockwise(&t(vec![100]), 32, None).unwrap_err();
    assert!(matches!(e, Error::BlockSize { got: 32, .. }), "{e}");
}

#[test]
fn wrong_dtype() {
    let dev = Device::cpu();
    let ints = Tensor::vector(vec![1i32, 2, 3, 4]);
    let e = dev
        .quantize_4bit(&ints, FourBitType::Nf4, 64, false)
        .unwrap_err();
    assert!(matches!(e, Error::DType { .. }), "{e}");
    let e = dev
        .int8_linear_matmul(&t(vec![2, 4]), &t(vec![2, 4]))
        .unwrap_err();
    assert!(matches!(e, Error::DType { .. }), "{e}");
}

#[test]
fn wrong_shapes() {
    let dev = Device::cpu();
    let q = dev
        .quantize_4bit(&t(vec![8, 64]), FourBitType::Nf4, 64, false)
        .unwrap();
    let e = dev.matmul_4bit(&t(vec![2, 32]), &q, None).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    assert!(e.to_string().contains("32 features"), "{e}");
    let e = dev.gemv_4bit(&t(vec![2, 64]), &q, None).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let flat = dev
        .quantize_4bit(&t(vec![512]), FourBitType::Nf4, 64, false)
        .unwrap();
    assert!(matches!(
        dev.matmul_4bit(&t(vec![1, 512]), &flat, None),
        Err(Error::Shape { .. })
    ));
    let e = dev
        .matmul(&t(vec![3, 5]), &t(vec![4, 6]), None)
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = dev.int8_vectorwise_quant(&t(vec![10]), 0.0).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = dev.ternary_quantize(&t(vec![10])).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = dev
        .softmax(&Tensor::f32(vec![], vec![1.0]).unwrap())
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

#[test]
fn length_mismatch() {
    let dev = Device::cpu();
    let q = dev
        .quantize_4bit(&t(vec![8, 64]), FourBitType::Nf4, 64, false)
        .unwrap();
    let e = dev
        .matmul_4bit(&t(vec![1, 64]), &q, Some(&t(vec![7])))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Length {
                what: "bias",
                got: 7,
                expected: 8,
                ..
            }
        ),
        "{e}"
    );
    let e = dev.rms_norm(&t(vec![2, 8]), &t(vec![7]), 1e-6).unwrap_err();
    assert!(matches!(e, Error::Length { .. }), "{e}");
    let c = Tensor::new(vec![2, 3], vec![0i32; 6]).unwrap();
    let e = dev
        .int8_mm_dequant(&c, &[1.0], &[1.0, 1.0, 1.0], None)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Length {
                what: "row_stats",
                ..
            }
        ),
        "{e}"
    );
    let mut q8 = dev.quantize_blockwise(&t(vec![300]), 64, None).unwrap();
    q8.absmax.pop();
    assert!(matches!(
        dev.dequantize_blockwise(&q8, None),
        Err(Error::Length { what: "absmax", .. })
    ));
}

#[test]
fn unknown_format() {
    let e = "nf5".parse::<FourBitType>().unwrap_err();
    assert!(matches!(e, Error::UnknownFormat { .. }), "{e}");
    assert!(e.to_string().contains("nf4, fp4"), "{e}");
}

#[test]
fn corrupt_quant_state() {
    let dev = Device::cpu();
    let mut q = dev
        .quantize_4bit(&t(vec![300]), FourBitType::Fp4, 64, true)
        .unwrap();
    let good = q.clone();
    if let Absmax::Nested { absmax_q, .. } = &mut q.state.absmax {
        absmax_q.push(0);
    }
    assert!(matches!(
        dev.dequantize_4bit(&q),
        Err(Error::CorruptQuantState(_))
    ));
    let mut q = good.clone();
    q.packed.pop();
    assert!(matches!(
        dev.dequantize_4bit(&q),
        Err(Error::CorruptQuantState(_))
    ));
    let mut q = good.clone();
    q.state.blocksize = 100;
    assert!(matches!(
        dev.dequantize_4bit(&q),
        Err(Error::CorruptQuantState(_))
    ));
    let mut q = good;
    if let Absmax::Nested { offset, .. } = &mut q.state.absmax {
        *offset = f32::NAN;
    }
    assert!(matches!(
        dev.dequantize_4bit(&q),
        Err(Error::CorruptQuantState(_))
    ));
    for bad in [
        &b"not json"[..],
        br#"[1, 2]"#,
        br#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float16"}"#,
        br#"{"quant_type": "nf9", "blocksize": 64, "dtype": "float16", "shape": [2]}"#,
        br#"{"quant_type": "nf4", "blocksize": 64, "dtype": "int8", "shape": [2]}"#,
        br#"{"quant_type": "nf4", "blocksize": "64", "dtype": "float16", "shape": [2]}"#,
        br#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [4294967296, 4294967296]}"#,
        br#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [2], "nested_offset": 0.1}"#,
    ] {
        let e = QuantStateJson::parse(bad).unwrap_err();
        assert!(matches!(e, Error::CorruptQuantState(_)), "{e}");
    }
}

#[test]
fn non_finite_inputs_are_reported_on_request() {
    let v = vec![1.0f32, f32::NAN, 2.0, f32::INFINITY];
    let e = ensure_finite(
        "quantize",
        Tensor::f32(vec![4], v.clone())
            .unwrap()
            .floats("t")
            .unwrap(),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::NonFinite {
                count: 2,
                first: 1,
                ..
            }
        ),
        "{e}"
    );
    // The quantizers themselves follow bitsandbytes' CUDA behaviour: NaN gets code 0, absmax ignores NaN.
    let dev = Device::cpu();
    let q = dev
        .quantize_4bit(
            &Tensor::f32(vec![4], v).unwrap(),
            FourBitType::Nf4,
            64,
            false,
        )
        .unwrap();
    assert_eq!(q.packed[0] & 0x0F, 0, "NaN quantizes to nibble 0");
}

#[test]
fn bad_scalars() {
    let dev = Device::cpu();
    assert!(matches!(
        dev.rms_norm(&t(vec![2, 4]), &t(vec![4]), 0.0),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        dev.int8_vectorwise_quant(&t(vec![2, 4]), -1.0),
        Err(Error::InvalidArgument { .. })
    ));
    let w = Tensor::from_floats(vec![4, 4], FloatVec::from_f32(vec![0.5; 16], DType::F16)).unwrap();
    let l = Linear8bitLt::from_weight(&dev, &w, None, 6.0).unwrap();
    assert!(matches!(
        l.forward(&dev, &t(vec![1, 5])),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn ternary_rows_without_columns_do_not_panic() {
    use lowbit::backend::cpu::{CpuBackend, ReferenceBackend};
    use lowbit::backend::{Backend, PackedTernary};
    let backends: [&dyn Backend; 2] = [&CpuBackend, &ReferenceBackend];
    for b in backends {
        let (q, scales) = b
            .ternary_act_quant(FloatVec::F32(Vec::new()).as_floats(), 3, 0)
            .unwrap();
        assert!(q.is_empty());
        assert_eq!(scales.len(), 3, "one scale per row, even for empty rows");
        let w = PackedTernary {
            packed: &[],
            weight_scale: 1.0,
            rows: 2,
            cols: 0,
        };
        let bias = FloatVec::F32(vec![0.5, -1.5]);
        let y = b
            .ternary_matmul(&q, &scales, 3, w, Some(bias.as_floats()))
            .unwrap();
        assert_eq!(y, vec![0.5, -1.5, 0.5, -1.5, 0.5, -1.5]);
    }
}

/// A tensor shorter than its shape cannot be built, so no kernel (the CPU's fused GEMV indexes x by the weight's
/// column count, the GPU uploads exactly the data's bytes) can be handed one: every constructor checks.
#[test]
fn a_tensor_shorter_than_its_shape_is_refused() {
    let e = Tensor::f32(vec![1, 64], vec![0.5; 32]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Length {
                got: 32,
                expected: 64,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("data has 32 elements, expected 64"),
        "{e}"
    );
    let e = Tensor::new(vec![2, 3], TensorData::I8(vec![0; 5])).unwrap_err();
    assert!(matches!(e, Error::Length { .. }), "{e}");
    let e = Tensor::vector(vec![0.5f32; 32])
        .reshape(vec![1, 64])
        .unwrap_err();
    assert!(matches!(e, Error::Length { .. }), "{e}");
    // A shape whose element count overflows is refused too (it would wrap to a small length).
    let e = Tensor::new(vec![1 << 40, 1 << 40], vec![0u8; 0]).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    // Longer data than the shape is the same mistake.
    let e = Tensor::from_floats(vec![2], FloatVec::F32(vec![0.0; 3])).unwrap_err();
    assert!(matches!(e, Error::Length { .. }), "{e}");

    // The fused GEMV's input is the only tensor of a whole row: with the checked constructors, a short row
    // never reaches it and a well-formed one runs.
    let dev = Device::cpu();
    let q = dev
        .quantize_4bit(&t(vec![4, 64]), FourBitType::Nf4, 64, false)
        .unwrap();
    assert!(Tensor::f32(vec![1, 64], vec![0.25; 63]).is_err());
    let x = Tensor::f32(vec![1, 64], vec![0.25; 64]).unwrap();
    assert_eq!(dev.matmul_4bit(&x, &q, None).unwrap().shape(), [1, 4]);
    // And a device tensor is made from a checked host tensor: its shape and bytes agree as well.
    let dx = dev.to_device(&x).unwrap();
    assert_eq!(dx.shape(), [1, 64]);
    assert_eq!(dev.to_host(&dx).unwrap(), x);
}
