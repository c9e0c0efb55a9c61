//! External data: an initializer whose bytes live in a file beside the model (`location`, `offset`, `length`
//! entries, as `onnx.save(..., save_as_external_data=True)` writes them).
use super::R;
use crate::modelfile::MAX_MODEL_FILE_BYTES;
use crate::onnx::proto::{tensor_proto::DataLocation, TensorProto};
use crate::onnx::OnnxError;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

/// Reads `t`'s external bytes into its `raw_data` and marks it as stored inline.
pub(super) fn load(t: &mut TensorProto, dir: &Path) -> R<()> {
    let entry = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key() == key)
            .map(|e| e.value().to_string())
    };
    let location = entry("location").unwrap_or_default();
    let bad = |reason: String| OnnxError::ExternalFile {
        name: t.name().to_string(),
        location: location.clone(),
        reason,
    };
    let number = |key: &str| -> R<Option<u64>> {
        entry(key)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| bad(format!("{key} {v:?} is not a number")))
            })
            .transpose()
    };
    let rel = Path::new(&location);
    let inside =
        !location.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !inside {
        return Err(bad(
            "the location must be a relative path inside the model's directory".into(),
        ));
    }
    let path = dir.join(rel);
    let offset = number("offset")?.unwrap_or(0);
    let mut file =
        std::fs::File::open(&path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let size = file.metadata().map_err(|e| bad(e.to_string()))?.len();
    let length = match number("length")? {
        Some(n) => n,
        None => size.saturating_sub(offset),
    };
    let end = offset.checked_add(length).filter(|&e| e <= size);
    if end.is_none() || length > MAX_MODEL_FILE_BYTES {
        return Err(bad(format!(
            "bytes {offset}..+{length} are not within the file's {size}"
        )));
    }
    let mut raw = vec![0u8; length as usize];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut raw))
        .map_err(|e| bad(format!("{}: {e}", path.display())))?;
    t.raw_data = Some(raw);
    t.external_data.clear();
    t.data_location = Some(DataLocation::Default as i32);
    Ok(())
}
