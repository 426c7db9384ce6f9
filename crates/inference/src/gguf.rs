//! Opening a GGUF file safely.
//!
//! Parsing is candle's (`gguf_file::Content::read`), which bounds every string and array by
//! the bytes left in the file. On top of it this module checks what candle leaves to the
//! caller: that each tensor's element count does not overflow, is a whole number of blocks,
//! and that its bytes lie inside the file — so a truncated or lying file is rejected at open,
//! with the file and tensor named, before any tensor is read.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;

use super::error::{InferenceError, Result};

/// An opened, bounds-checked GGUF file: metadata in memory, tensors read on demand.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| InferenceError::Open {
            path: path.clone(),
            source,
        })?;
        let file_len = file
            .metadata()
            .map_err(|source| InferenceError::Open {
                path: path.clone(),
                source,
            })?
            .len();
        let mut reader = BufReader::new(file);
        // candle's reader divides by `general.alignment` unchecked; a file stating 0 would
        // panic inside it, so reject that (and any other panic) as a malformed file.
        let loud = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let parsed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(&mut reader)));
        std::panic::set_hook(loud);
        let content = match parsed {
            Ok(Ok(content)) => content,
            Ok(Err(e)) => return Err(malformed(&path, e.to_string())),
            Err(_) => return Err(malformed(&path, "header is inconsistent".into())),
        };
        let gguf = Self { path, content };
        gguf.check_tensor_bounds(file_len)?;
        Ok(gguf)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_tensor_bounds(&self, file_len: u64) -> Result<()> {
        for (name, info) in &self.content.tensor_infos {
            let bytes = tensor_bytes(info).ok_or_else(|| {
                self.bad_tensor(
                    name,
                    format!(
                        "shape {:?} of type {:?} is not a whole number of blocks or overflows",
                        info.shape.dims(),
                        info.ggml_dtype
                    ),
                )
            })?;
            let end = self
                .content
                .tensor_data_offset
                .checked_add(info.offset)
                .and_then(|start| start.checked_add(bytes));
            match end {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(self.bad_tensor(
                        name,
                        format!(
                            "its {bytes} bytes at offset {} lie past the end of the file ({file_len} bytes): the file is truncated or corrupt",
                            self.content.tensor_data_offset.saturating_add(info.offset)
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    pub fn bad_tensor(&self, tensor: &str, problem: String) -> InferenceError {
        InferenceError::BadTensor {
            path: self.path.clone(),
            tensor: tensor.to_string(),
            problem,
        }
    }

    pub fn metadata(&self) -> &std::collections::HashMap<String, Value> {
        &self.content.metadata
    }

    /// Tensor names with their GGUF-order dims reversed to row-major, as candle sees them.
    pub fn tensor_infos(&self) -> BTreeMap<&str, &TensorInfo> {
        self.content
            .tensor_infos
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect()
    }

    /// How many tensors the file holds: the bound on any count its metadata states.
    pub fn tensor_count(&self) -> usize {
        self.content.tensor_infos.len()
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.content.tensor_infos.get(name)
    }

    /// Reads one tensor; it stays quantized.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let file = File::open(&self.path).map_err(|source| InferenceError::Open {
            path: self.path.clone(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        self.content
            .tensor(&mut reader, name, device)
            .map_err(|e| self.bad_tensor(name, e.to_string()))
    }

    /// Tensor `name`'s bytes as a reader of byte ranges, so a loader can read them in
    /// pieces, on several threads, straight into their final place (no whole-tensor copy).
    pub fn tensor_reader(&self, name: &str) -> Result<TensorReader> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| self.bad_tensor(name, "is missing".into()))?;
        let len = tensor_bytes(info)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| self.bad_tensor(name, "has an impossible size".into()))?;
        let file = File::open(&self.path).map_err(|source| InferenceError::Open {
            path: self.path.clone(),
            source,
        })?;
        Ok(TensorReader {
            file,
            start: self.content.tensor_data_offset + info.offset,
            len,
        })
    }

    fn value(&self, key: &str) -> Result<&Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| InferenceError::MissingKey {
                path: self.path.clone(),
                key: key.to_string(),
            })
    }

    fn bad_key(&self, key: &str, problem: impl Into<String>) -> InferenceError {
        InferenceError::BadKey {
            path: self.path.clone(),
            key: key.to_string(),
            problem: problem.into(),
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.content.metadata.contains_key(key)
    }

    /// An unsigned integer, whatever integer width the writer chose.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        let value = self.value(key)?;
        value_as_u64(value)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| {
                self.bad_key(
                    key,
                    format!("should be a non-negative integer, found {value:?}"),
                )
            })
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        if self.has(key) {
            self.get_usize(key).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let value = self.value(key)?;
        let v = match value {
            Value::F32(v) => Some(*v as f64),
            Value::F64(v) => Some(*v),
            other => value_as_u64(other).map(|v| v as f64),
        };
        v.filter(|v| v.is_finite())
            .ok_or_else(|| self.bad_key(key, format!("should be a finite number, found {value:?}")))
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        if self.has(key) {
            self.get_f64(key).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.value(key)? {
            Value::String(s) => Ok(s),
            other => Err(self.bad_key(key, format!("should be a string, found {}", kind(other)))),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        if self.has(key) {
            self.get_str(key).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => {
                Err(self.bad_key(key, format!("should be a bool, found {}", kind(other))))
            }
        }
    }

    pub fn get_array(&self, key: &str) -> Result<&[Value]> {
        match self.value(key)? {
            Value::Array(v) => Ok(v),
            other => Err(self.bad_key(key, format!("should be an array, found {}", kind(other)))),
        }
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.get_array(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                other => Err(self.bad_key(
                    key,
                    format!("element {i} should be a string, found {}", kind(other)),
                )),
            })
            .collect()
    }

    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>> {
        self.get_array(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                value_as_i64(v).ok_or_else(|| {
                    self.bad_key(
                        key,
                        format!("element {i} should be an integer, found {}", kind(v)),
                    )
                })
            })
            .collect()
    }
}

fn malformed(path: &Path, reason: String) -> InferenceError {
    InferenceError::Malformed {
        path: path.to_path_buf(),
        reason,
    }
}

/// Bytes a tensor occupies on disk, or `None` when its shape overflows or is not a whole
/// number of quantization blocks.
pub fn tensor_bytes(info: &TensorInfo) -> Option<u64> {
    let elems = info
        .shape
        .dims()
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))?;
    let block = info.ggml_dtype.block_size() as u64;
    if elems % block != 0 {
        return None;
    }
    (elems / block).checked_mul(info.ggml_dtype.type_size() as u64)
}

fn value_as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::U8(v) => Some(*v as u64),
        Value::U16(v) => Some(*v as u64),
        Value::U32(v) => Some(*v as u64),
        Value::U64(v) => Some(*v),
        other => value_as_i64(other).and_then(|v| u64::try_from(v).ok()),
    }
}

fn value_as_i64(value: &Value) -> Option<i64> {
    match value {
        Value::I8(v) => Some(*v as i64),
        Value::I16(v) => Some(*v as i64),
        Value::I32(v) => Some(*v as i64),
        Value::I64(v) => Some(*v),
        Value::U8(v) => Some(*v as i64),
        Value::U16(v) => Some(*v as i64),
        Value::U32(v) => Some(*v as i64),
        Value::U64(v) => i64::try_from(*v).ok(),
        _ => None,
    }
}

fn kind(value: &Value) -> String {
    format!("{:?}", value.value_type())
}

/// The GGML type names llama.cpp prints, for reports.
pub fn dtype_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}

/// One tensor's bytes in the file, read by range (`pread`, so threads share it).
pub struct TensorReader {
    file: File,
    start: u64,
    len: usize,
}

impl TensorReader {
    /// Bytes in the tensor.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fills `buf` with the tensor's bytes from `at`.
    pub fn read_at(&self, at: usize, buf: &mut [u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if at + buf.len() > self.len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the tensor's end",
            ));
        }
        self.file.read_exact_at(buf, self.start + at as u64)
    }
}
