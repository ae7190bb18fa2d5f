//! Element types of the safetensors file format (the `dtype` strings of its header).

use crate::tensor::DType;

/// A safetensors element type. Tensors lowbit does not quantize are copied byte for byte whatever their type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StDtype {
    Bool,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    I64,
    U64,
    F64,
}

impl StDtype {
    pub fn parse(name: &str) -> Option<StDtype> {
        Some(match name {
            "BOOL" => StDtype::Bool,
            "U8" => StDtype::U8,
            "I8" => StDtype::I8,
            "F8_E5M2" => StDtype::F8E5M2,
            "F8_E4M3" => StDtype::F8E4M3,
            "I16" => StDtype::I16,
            "U16" => StDtype::U16,
            "F16" => StDtype::F16,
            "BF16" => StDtype::BF16,
            "I32" => StDtype::I32,
            "U32" => StDtype::U32,
            "F32" => StDtype::F32,
            "I64" => StDtype::I64,
            "U64" => StDtype::U64,
            "F64" => StDtype::F64,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            StDtype::Bool => "BOOL",
            StDtype::U8 => "U8",
            StDtype::I8 => "I8",
            StDtype::F8E5M2 => "F8_E5M2",
            StDtype::F8E4M3 => "F8_E4M3",
            StDtype::I16 => "I16",
            StDtype::U16 => "U16",
            StDtype::F16 => "F16",
            StDtype::BF16 => "BF16",
            StDtype::I32 => "I32",
            StDtype::U32 => "U32",
            StDtype::F32 => "F32",
            StDtype::I64 => "I64",
            StDtype::U64 => "U64",
            StDtype::F64 => "F64",
        }
    }

    pub fn size(self) -> usize {
        match self {
            StDtype::Bool | StDtype::U8 | StDtype::I8 | StDtype::F8E5M2 | StDtype::F8E4M3 => 1,
            StDtype::I16 | StDtype::U16 | StDtype::F16 | StDtype::BF16 => 2,
            StDtype::I32 | StDtype::U32 | StDtype::F32 => 4,
            StDtype::I64 | StDtype::U64 | StDtype::F64 => 8,
        }
    }

    /// The lowbit tensor type, for the types lowbit computes with.
    pub fn to_dtype(self) -> Option<DType> {
        Some(match self {
            StDtype::F32 => DType::F32,
            StDtype::F16 => DType::F16,
            StDtype::BF16 => DType::BF16,
            StDtype::U8 => DType::U8,
            StDtype::I8 => DType::I8,
            StDtype::I32 => DType::I32,
            StDtype::I64 => DType::I64,
            _ => return None,
        })
    }

    pub fn from_dtype(d: DType) -> StDtype {
        match d {
            DType::F32 => StDtype::F32,
            DType::F16 => StDtype::F16,
            DType::BF16 => StDtype::BF16,
            DType::U8 => StDtype::U8,
            DType::I8 => StDtype::I8,
            DType::I32 => StDtype::I32,
            DType::I64 => StDtype::I64,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, StDtype::F16 | StDtype::BF16 | StDtype::F32)
    }
}

impl std::fmt::Display for StDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
