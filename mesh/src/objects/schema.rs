//! JSON schemas for the fields keel keeps as written rather than typed (a DestinationRule's `tls`, a policy's
//! `provider`...): in a CRD they are objects whose contents the API server keeps without checking, which is what
//! `x-kubernetes-preserve-unknown-fields` says. keel validates them itself when it translates the object.
use schemars::{json_schema, Schema, SchemaGenerator};

/// Any one value.
pub(crate) fn any_value(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}

/// A list of any values.
pub(crate) fn any_values(generator: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "array", "items": any_value(generator) })
}
