//! Job parameters from JSON: typed, defaults for missing fields, unknown
//! fields refused, and errors that name the field.

use serde::de::DeserializeOwned;

use crate::EngineError;

/// Parses `params` (`null` for all defaults) into `T`. A failure names the
/// offending field when one can be singled out.
pub fn parse_params<T: DeserializeOwned + Default>(
    job: &str,
    params: &serde_json::Value,
) -> Result<T, EngineError> {
    if params.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value::<T>(params.clone()).map_err(|e| {
        // Single out the field: the first that fails on its own.
        let field = params.as_object().and_then(|o| {
            o.iter().find_map(|(k, v)| {
                let mut one = serde_json::Map::new();
                one.insert(k.clone(), v.clone());
                serde_json::from_value::<T>(serde_json::Value::Object(one))
                    .err()
                    .map(|e| format!("field `{k}`: {e}"))
            })
        });
        EngineError::InvalidArgument {
            what: "params",
            reason: format!("{job}: {}", field.unwrap_or_else(|| e.to_string())),
        }
    })
}

/// Serde for byte sizes: an integer, or a string such as `"1GiB"`
/// (`protocol::units::parse_size`). Use with `#[serde(with = "size")]`.
pub mod size {
    use serde::{Deserialize, Deserializer, Serializer};
    use shuffle_client::protocol::units::parse_size;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Size::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a size: bytes or a string like \"1GiB\""))?
        {
            Size::Bytes(n) => Ok(n),
            Size::Text(t) => parse_size(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// A required-at-least-one count.
pub(crate) fn at_least_one(what: &'static str, n: u32) -> Result<u32, EngineError> {
    if n == 0 {
        return Err(EngineError::InvalidArgument {
            what,
            reason: "must be at least 1".into(),
        });
    }
    Ok(n)
}
