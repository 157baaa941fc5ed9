//! Read-only operations served next to skills (searches, lookups). They are plain calls, not
//! sagas: nothing to persist, retry or undo. Registering them with the skills lets a facade
//! list and authorize everything from one registry.

use crate::error::StepError;
use crate::skill::{BoxFuture, Exposure, InputError, SkillInput};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;

type Handler = Arc<dyn Fn(Value) -> BoxFuture<Result<Value, StepError>> + Send + Sync>;
type ValidateFn = Arc<dyn Fn(&Value) -> Result<(), InputError> + Send + Sync>;

/// A named read-only operation with typed input and output.
#[derive(Clone)]
pub struct Query {
    name: String,
    description: String,
    input_schema: Value,
    output_schema: Value,
    exposure: Exposure,
    validate: ValidateFn,
    handler: Handler,
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query").field("name", &self.name).finish()
    }
}

impl Query {
    pub fn new<I, O, F, Fut>(
        name: impl Into<String>,
        description: impl Into<String>,
        exposure: Exposure,
        handler: F,
    ) -> Self
    where
        I: SkillInput,
        O: Serialize + JsonSchema + 'static,
        F: Fn(I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, StepError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        Self {
            name: name.into(),
            description: description.into(),
            input_schema: serde_json::to_value(schemars::schema_for!(I)).unwrap_or(Value::Null),
            output_schema: serde_json::to_value(schemars::schema_for!(O)).unwrap_or(Value::Null),
            exposure,
            validate: Arc::new(|value| {
                let input = I::deserialize(value).map_err(|e| InputError {
                    field: None,
                    message: e.to_string(),
                })?;
                input.validate()
            }),
            handler: Arc::new(move |value| {
                let handler = handler.clone();
                Box::pin(async move {
                    let input = I::deserialize(&value)
                        .map_err(|e| StepError::permanent("invalid_input", e.to_string()))?;
                    let output = handler(input).await?;
                    serde_json::to_value(output)
                        .map_err(|e| StepError::permanent("unserializable_output", e.to_string()))
                })
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    pub fn input_schema(&self) -> &Value {
        &self.input_schema
    }

    pub fn output_schema(&self) -> &Value {
        &self.output_schema
    }

    pub fn exposure(&self) -> &Exposure {
        &self.exposure
    }

    pub fn validate(&self, input: &Value) -> Result<(), InputError> {
        (self.validate)(input)
    }

    /// Validates and runs the query.
    pub async fn call(&self, input: Value) -> Result<Value, StepError> {
        self.validate(&input)
            .map_err(|e| StepError::permanent("invalid_input", e.to_string()))?;
        (self.handler)(input).await
    }
}
