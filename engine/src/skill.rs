//! Skills and steps: what a saga runs.
//!
//! A [`Skill`] has a stable name, a version and an ordered list of [`Step`]s. A step has an
//! action, an optional compensation, a retry policy and a timeout. Step names are a durable
//! contract (they are stored with every saga): a changed step gets a new name or the skill a new
//! version. Inputs and outputs are typed with serde; the engine stores them as JSON.

use crate::error::StepError;
use crate::retry::RetryPolicy;
use crate::wait::{Received, Wait, WaitBook};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A boxed, sendable future, the erased form of step actions.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

type ActionFn = Arc<dyn Fn(StepContext) -> BoxFuture<Result<Value, StepError>> + Send + Sync>;
type CompensateFn =
    Arc<dyn Fn(StepContext, Value) -> BoxFuture<Result<Value, StepError>> + Send + Sync>;
type ValidateFn = Arc<dyn Fn(&Value) -> Result<(), InputError> + Send + Sync>;
type FinishFn = Arc<dyn Fn(&Value, &BTreeMap<String, Value>) -> Value + Send + Sync>;
type AttemptsOverrideFn = Arc<dyn Fn(&Value) -> Option<u32> + Send + Sync>;
type StepCountFn = Arc<dyn Fn(&Value) -> usize + Send + Sync>;

/// What a step action sees.
#[derive(Clone, Debug)]
pub struct StepContext {
    pub saga_id: Uuid,
    pub skill: Arc<str>,
    pub step: Arc<str>,
    /// 0-based position of the step in the skill.
    pub position: usize,
    /// Attempts of this action (or of this compensation) over the saga's whole life, this one
    /// included: operator retries and attempts cut short by a crash count too.
    pub attempt: u32,
    /// Stable across attempts: `{saga_id}/{step}`, or `{saga_id}/{step}/compensate`. Pass it to
    /// external systems so a re-run has no second effect.
    pub idempotency_key: String,
    /// When this attempt started, by the engine's [`Clock`](crate::Clock). Steps that need the
    /// current time read it here rather than from the wall clock, so moving a test's
    /// `ManualClock` moves their time too.
    pub now: DateTime<Utc>,
    pub(crate) input: Arc<Value>,
    pub(crate) outputs: Arc<BTreeMap<String, Value>>,
    /// The step's waits (None in compensations, which cannot wait).
    pub(crate) waits: Option<Arc<WaitBook>>,
    /// In a compensation: the step never succeeded, but an attempt failed with an unknown
    /// outcome ([`crate::ErrorClass::Unknown`]), so it may have taken effect. The compensation
    /// gets `Value::Null` as the output and must find out what happened (for example by the
    /// action's idempotency key, [`StepContext::action_idempotency_key`]), undo it if it did,
    /// and succeed when there is nothing to undo. Always false for actions.
    pub possibly_done: bool,
}

impl StepContext {
    /// The idempotency key the step's action uses (`{saga_id}/{step}`), also in its
    /// compensation: what a compensation of a possibly done step looks the effect up by.
    pub fn action_idempotency_key(&self) -> String {
        format!("{}/{}", self.saga_id, self.step)
    }

    /// The saga input, typed. Inputs are validated at start, so a failure here is permanent.
    pub fn input<T: DeserializeOwned>(&self) -> Result<T, StepError> {
        T::deserialize(self.input.as_ref())
            .map_err(|e| StepError::permanent("invalid_input", e.to_string()))
    }

    pub fn input_value(&self) -> &Value {
        &self.input
    }

    /// The output an earlier step committed, typed.
    pub fn output<T: DeserializeOwned>(&self, step: &str) -> Result<T, StepError> {
        let value = self.outputs.get(step).ok_or_else(|| {
            StepError::permanent(
                "missing_step_output",
                format!("step `{step}` has no recorded output"),
            )
        })?;
        T::deserialize(value).map_err(|e| {
            StepError::permanent(
                "invalid_step_output",
                format!("output of step `{step}`: {e}"),
            )
        })
    }

    pub fn output_value(&self, step: &str) -> Option<&Value> {
        self.outputs.get(step)
    }

    /// The payload of event `event` delivered to this saga (oldest first, one per wait), or an
    /// error that suspends the step until it comes or the wait's deadline passes: pass it on
    /// with `?`. At the deadline: the wait's default payload, or the permanent error
    /// `wait_timed_out`. The step must declare the event ([`Step::awaits`]). See [`crate::wait`].
    pub fn await_event(&self, event: &str, wait: Wait) -> Result<Value, StepError> {
        self.await_delivery(event, wait)
            .map(|received| received.payload)
    }

    /// Like [`StepContext::await_event`], but also says who delivered the event and under which
    /// key (both None when the deadline passed and the wait's default payload was used).
    pub fn await_delivery(&self, event: &str, wait: Wait) -> Result<Received, StepError> {
        match &self.waits {
            Some(book) => book.await_event(event, &wait),
            None => Err(no_waits_here()),
        }
    }

    /// A durable sleep until `instant` (by the engine's clock): returns at once when it has
    /// passed, else an error that suspends the step until then (pass it on with `?`).
    pub fn sleep_until(&self, instant: DateTime<Utc>) -> Result<(), StepError> {
        match &self.waits {
            Some(book) => book.sleep_until(Some(instant), Duration::ZERO),
            None => Err(no_waits_here()),
        }
    }

    /// A durable sleep of `duration` from the moment the action first reaches it (the end is
    /// persisted, so running the step again does not extend it).
    pub fn sleep(&self, duration: Duration) -> Result<(), StepError> {
        match &self.waits {
            Some(book) => book.sleep_until(None, duration),
            None => Err(no_waits_here()),
        }
    }
}

fn no_waits_here() -> StepError {
    StepError::permanent(
        "wait_in_compensation",
        "a compensation cannot wait for an event or a time",
    )
}

/// A rejected input, naming the field when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct InputError {
    pub field: Option<String>,
    pub message: String,
}

impl InputError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

/// A skill's input type: deserializable, described by a JSON Schema, and able to check the
/// rules serde cannot express (date order, formats, ranges).
pub trait SkillInput: DeserializeOwned + JsonSchema + Send + Sync + 'static {
    fn validate(&self) -> Result<(), InputError> {
        Ok(())
    }
}

/// One persisted step of a skill.
#[derive(Clone)]
pub struct Step {
    name: Arc<str>,
    action: ActionFn,
    compensation: Option<CompensateFn>,
    retry: RetryPolicy,
    compensation_retry: RetryPolicy,
    timeout: Duration,
    /// Events the action may wait for, with their payload schemas.
    awaits: Arc<BTreeMap<String, Value>>,
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("compensable", &self.compensation.is_some())
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn to_output<O: Serialize>(result: Result<O, StepError>) -> Result<Value, StepError> {
    result.and_then(|out| {
        serde_json::to_value(out)
            .map_err(|e| StepError::permanent("unserializable_output", e.to_string()))
    })
}

impl Step {
    /// Default time an attempt may take before it counts as a retryable `timeout` failure.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    pub fn new<F, Fut, O>(name: impl Into<Arc<str>>, action: F) -> Self
    where
        F: Fn(StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, StepError>> + Send + 'static,
        O: Serialize + 'static,
    {
        let action = Arc::new(action);
        Self {
            name: name.into(),
            action: Arc::new(move |ctx| {
                let fut = action(ctx);
                Box::pin(async move { to_output(fut.await) })
            }),
            compensation: None,
            retry: RetryPolicy::default(),
            compensation_retry: RetryPolicy::default(),
            timeout: Self::DEFAULT_TIMEOUT,
            awaits: Arc::new(BTreeMap::new()),
        }
    }

    /// Declares that the action may wait for event `event` ([`StepContext::await_event`]),
    /// whose payload must match the JSON Schema `schema`. Deliveries are checked against it
    /// even before the saga reaches the wait; an event no step declares is refused.
    pub fn awaits(mut self, event: impl Into<String>, schema: Value) -> Self {
        Arc::make_mut(&mut self.awaits).insert(event.into(), schema);
        self
    }

    /// The events this step may wait for, with their payload schemas.
    pub fn awaited_events(&self) -> &BTreeMap<String, Value> {
        &self.awaits
    }

    /// How to undo this step; it receives the step's recorded output.
    pub fn compensate<F, Fut, O>(mut self, compensation: F) -> Self
    where
        F: Fn(StepContext, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, StepError>> + Send + 'static,
        O: Serialize + 'static,
    {
        let compensation = Arc::new(compensation);
        self.compensation = Some(Arc::new(move |ctx, output| {
            let fut = compensation(ctx, output);
            Box::pin(async move { to_output(fut.await) })
        }));
        self
    }

    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    pub fn compensation_retry(mut self, policy: RetryPolicy) -> Self {
        self.compensation_retry = policy;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn name_arc(&self) -> Arc<str> {
        self.name.clone()
    }

    pub fn is_compensable(&self) -> bool {
        self.compensation.is_some()
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    pub fn compensation_retry_policy(&self) -> RetryPolicy {
        self.compensation_retry
    }

    pub fn timeout_duration(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn run(&self, ctx: StepContext) -> BoxFuture<Result<Value, StepError>> {
        (self.action)(ctx)
    }

    pub(crate) fn run_compensation(
        &self,
        ctx: StepContext,
        output: Value,
    ) -> Option<BoxFuture<Result<Value, StepError>>> {
        self.compensation.as_ref().map(|c| c(ctx, output))
    }
}

/// Who may call a skill or query through a facade, and how it behaves. Roles are plain names
/// (the facade decides what a role is); the engine itself enforces none of this.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Exposure {
    /// Roles allowed to call it, e.g. `staff`, `manager`. Empty: not exposed as a tool.
    pub roles: Vec<String>,
    /// Roles that may call it only on their own data: the input field named by
    /// `subject_field` must equal the caller's subject (e.g. a guest's email).
    pub self_service_roles: Vec<String>,
    pub subject_field: Option<String>,
    /// May destroy or reverse something (refunds, cancellations).
    pub destructive: bool,
    /// Reaches systems outside Stepwise (payments, CRM, SMS).
    pub open_world: bool,
    /// An input field a facade fills with the caller's subject (e.g. `reported_by`), so who
    /// acted is recorded from the caller's identity, never from what a model typed.
    pub caller_field: Option<String>,
}

impl Exposure {
    pub fn roles(roles: &[&str]) -> Self {
        Self {
            roles: roles.iter().map(|r| r.to_string()).collect(),
            ..Self::default()
        }
    }

    /// `roles` may act on the data of the subject named by the input field `field`.
    pub fn self_service(mut self, roles: &[&str], field: &str) -> Self {
        self.self_service_roles = roles.iter().map(|r| r.to_string()).collect();
        self.subject_field = Some(field.to_string());
        self
    }

    pub fn destructive(mut self) -> Self {
        self.destructive = true;
        self
    }

    pub fn open_world(mut self) -> Self {
        self.open_world = true;
        self
    }

    /// A facade sets input field `field` to the caller's subject.
    pub fn caller_field(mut self, field: &str) -> Self {
        self.caller_field = Some(field.to_string());
        self
    }

    /// Whether `role` may call at all (its own data only, for self-service roles).
    pub fn allows(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role) || self.self_service_roles.iter().any(|r| r == role)
    }
}

/// A named, versioned saga definition.
#[derive(Clone)]
pub struct Skill {
    name: String,
    version: u32,
    description: String,
    exposure: Exposure,
    input_schema: Value,
    output_schema: Option<Value>,
    steps: Vec<Step>,
    validate: ValidateFn,
    finish: FinishFn,
    attempts_override: Option<AttemptsOverrideFn>,
    step_count: Option<StepCountFn>,
}

impl std::fmt::Debug for Skill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Skill")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("steps", &self.steps)
            .finish()
    }
}

/// Why a skill definition was rejected.
#[derive(Debug, thiserror::Error)]
pub enum SkillError {
    #[error("skill `{0}` has no steps")]
    NoSteps(String),
    #[error("skill `{skill}` has two steps named `{step}`")]
    DuplicateStep { skill: String, step: String },
    #[error("skill `{0}` must have a version of at least 1")]
    BadVersion(String),
}

impl Skill {
    /// Starts a definition whose input is `I`.
    pub fn builder<I: SkillInput>(
        name: impl Into<String>,
        version: u32,
        description: impl Into<String>,
    ) -> SkillBuilder {
        let schema = serde_json::to_value(schemars::schema_for!(I)).unwrap_or(Value::Null);
        SkillBuilder {
            skill: Skill {
                name: name.into(),
                version,
                description: description.into(),
                exposure: Exposure::default(),
                input_schema: schema,
                output_schema: None,
                steps: Vec::new(),
                validate: Arc::new(|value| {
                    let input = I::deserialize(value).map_err(|e| InputError {
                        field: None,
                        message: e.to_string(),
                    })?;
                    input.validate()
                }),
                finish: Arc::new(|_, outputs| Value::Object(outputs.clone().into_iter().collect())),
                attempts_override: None,
                step_count: None,
            },
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    pub fn input_schema(&self) -> &Value {
        &self.input_schema
    }

    pub fn output_schema(&self) -> Option<&Value> {
        self.output_schema.as_ref()
    }

    pub fn exposure(&self) -> &Exposure {
        &self.exposure
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The steps a saga with this input runs: all of them, or the leading ones a
    /// [`SkillBuilder::step_count`] function selects.
    pub fn steps_for(&self, input: &Value) -> &[Step] {
        let n = self
            .step_count
            .as_ref()
            .map_or(self.steps.len(), |f| f(input).clamp(1, self.steps.len()));
        &self.steps[..n]
    }

    /// The payload schema of event `event`, if a step declares it ([`Step::awaits`]).
    pub fn event_schema(&self, event: &str) -> Option<&Value> {
        self.steps.iter().find_map(|s| s.awaits.get(event))
    }

    /// Every step the definition has, in order.
    pub fn step_names(&self) -> Vec<String> {
        self.steps.iter().map(|s| s.name().to_string()).collect()
    }

    pub fn step_names_for(&self, input: &Value) -> Vec<String> {
        self.steps_for(input)
            .iter()
            .map(|s| s.name().to_string())
            .collect()
    }

    pub fn validate(&self, input: &Value) -> Result<(), InputError> {
        (self.validate)(input)
    }

    /// The saga's output once every step succeeded.
    pub fn finish(&self, input: &Value, outputs: &BTreeMap<String, Value>) -> Value {
        (self.finish)(input, outputs)
    }

    /// The retry policy of a step's action for this saga's input.
    pub fn action_policy(&self, step: &Step, input: &Value) -> RetryPolicy {
        self.apply_override(step.retry_policy(), input)
    }

    /// The retry policy of a step's compensation for this saga's input.
    pub fn compensation_policy(&self, step: &Step, input: &Value) -> RetryPolicy {
        self.apply_override(step.compensation_retry_policy(), input)
    }

    fn apply_override(&self, policy: RetryPolicy, input: &Value) -> RetryPolicy {
        match self.attempts_override.as_ref().and_then(|f| f(input)) {
            Some(attempts) => policy.with_max_attempts(attempts),
            None => policy,
        }
    }
}

/// Builds a [`Skill`]; see [`Skill::builder`].
pub struct SkillBuilder {
    skill: Skill,
}

impl SkillBuilder {
    pub fn step(mut self, step: Step) -> Self {
        self.skill.steps.push(step);
        self
    }

    /// Who may call the skill through a facade.
    pub fn exposure(mut self, exposure: Exposure) -> Self {
        self.skill.exposure = exposure;
        self
    }

    /// Describes the output with a JSON Schema (for tool listings).
    pub fn output<O: JsonSchema>(mut self) -> Self {
        self.skill.output_schema = serde_json::to_value(schemars::schema_for!(O)).ok();
        self
    }

    /// How the saga output is made from the input and the step outputs (default: an object of
    /// every step's output keyed by step name).
    pub fn finish<F>(mut self, finish: F) -> Self
    where
        F: Fn(&Value, &BTreeMap<String, Value>) -> Value + Send + Sync + 'static,
    {
        self.skill.finish = Arc::new(finish);
        self
    }

    /// Lets a saga's input override the attempts of every step and compensation.
    pub fn attempts_override<F>(mut self, f: F) -> Self
    where
        F: Fn(&Value) -> Option<u32> + Send + Sync + 'static,
    {
        self.skill.attempts_override = Some(Arc::new(f));
        self
    }

    /// Lets a saga run only the first `f(input)` steps (at least one): for skills whose length
    /// depends on the input, such as the synthetic chain.
    pub fn step_count<F>(mut self, f: F) -> Self
    where
        F: Fn(&Value) -> usize + Send + Sync + 'static,
    {
        self.skill.step_count = Some(Arc::new(f));
        self
    }

    pub fn build(self) -> Result<Skill, SkillError> {
        let skill = self.skill;
        if skill.version == 0 {
            return Err(SkillError::BadVersion(skill.name));
        }
        if skill.steps.is_empty() {
            return Err(SkillError::NoSteps(skill.name));
        }
        let mut seen = std::collections::HashSet::new();
        for step in &skill.steps {
            if !seen.insert(step.name()) {
                return Err(SkillError::DuplicateStep {
                    skill: skill.name.clone(),
                    step: step.name().to_string(),
                });
            }
        }
        Ok(skill)
    }
}
