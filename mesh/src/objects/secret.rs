//! Secret (v1): read only for the certificates, keys and CA bundles a Gateway's TLS servers name by
//! `credentialName`. keel-control sends a Secret's contents to the gateway pods whose servers name it, never to
//! node proxies, and never logs them: `Debug` shows the keys, not the values.
use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Deserializer};

use super::Metadata;

#[derive(Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    pub metadata: Metadata,
    #[serde(default, rename = "type")]
    pub secret_type: Option<String>,
    /// `data`, base64-decoded.
    #[serde(default, deserialize_with = "base64_values")]
    pub data: BTreeMap<String, Vec<u8>>,
    /// `stringData`, which the API server folds into `data` (a config directory may hold it as written).
    #[serde(default)]
    pub string_data: BTreeMap<String, String>,
}

impl Secret {
    /// The value under `key` (`stringData` over `data`, as the API server merges them).
    pub fn value(&self, key: &str) -> Option<&[u8]> {
        self.string_data.get(key).map(String::as_bytes).or_else(|| self.data.get(key).map(Vec::as_slice))
    }

    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.data.keys().chain(self.string_data.keys()).map(String::as_str).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret").field("metadata", &self.metadata).field("type", &self.secret_type).field("keys", &self.keys()).finish()
    }
}

fn base64_values<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
    let encoded = Option::<BTreeMap<String, String>>::deserialize(deserializer)?.unwrap_or_default();
    encoded
        .into_iter()
        .map(|(key, value)| {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .map_err(|e| serde::de::Error::custom(format!("data[{key:?}]: not base64 ({e})")))?;
            Ok((key, decoded))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_decoded_and_never_printed() {
        let secret: Secret = serde_yaml_ng::from_str(
            "metadata: {name: cert, namespace: gw}\ntype: kubernetes.io/tls\ndata: {tls.crt: Q0VSVA==}\nstringData: {tls.key: KEY}\n",
        )
        .unwrap();
        assert_eq!(secret.value("tls.crt"), Some(&b"CERT"[..]));
        assert_eq!(secret.value("tls.key"), Some(&b"KEY"[..]));
        assert_eq!(secret.value("ca.crt"), None);
        let shown = format!("{secret:?}");
        assert!(shown.contains("tls.key") && !shown.contains("KEY\"") && !shown.contains("CERT"), "{shown}");
        let bad = serde_yaml_ng::from_str::<Secret>("metadata: {name: c}\ndata: {tls.crt: '***'}\n").unwrap_err();
        assert!(bad.to_string().contains("data[\"tls.crt\"]: not base64"), "{bad}");
    }
}
