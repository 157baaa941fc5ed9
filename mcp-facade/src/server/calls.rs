//! Calls of skill and query tools: arguments, own-data rules, starting the saga, waiting.

use super::*;

impl StepwiseServer {
    pub(super) async fn call_skill(
        &self,
        caller: &Caller,
        skill: Arc<Skill>,
        access: Access,
        mut args: JsonObject,
        retry: &Retry,
        ctx: &RequestContext<RoleServer>,
    ) -> Call {
        let declares_key = crate::tools::skill_declares_key(&skill);
        let key = if declares_key {
            args.get(IDEMPOTENCY_KEY).cloned()
        } else {
            args.remove(IDEMPOTENCY_KEY)
        };
        let key = match key {
            Some(Value::String(k)) if !k.trim().is_empty() && k.len() <= 200 => k,
            Some(Value::String(_)) => {
                return Ok(Answer::refused(
                    ToolError::invalid(Some(IDEMPOTENCY_KEY.into()), "must be 1 to 200 characters"),
                    None,
                ))
            }
            Some(Value::Null) | None => {
                return Ok(Answer::refused(
                    ToolError::invalid(
                        Some(IDEMPOTENCY_KEY.into()),
                        "is required: pick a new key for each new request, and reuse it only \
                         to repeat the same request",
                    ),
                    None,
                ))
            }
            Some(_) => {
                return Ok(Answer::refused(
                    ToolError::invalid(Some(IDEMPOTENCY_KEY.into()), "must be a string"),
                    None,
                ))
            }
        };
        if let Err(e) = enforce_subject(&caller.principal, &access, &mut args) {
            return Ok(Answer::refused(e, None));
        }
        fill_caller_field(&caller.principal, skill.exposure(), &mut args);
        let input = Value::Object(args);
        if let Err(e) = check_input(skill.input_schema(), &input, |v| skill.validate(v)) {
            return Ok(Answer::refused(e, None));
        }

        let started = self
            .facade
            .engine
            .start(StartRequest {
                skill: skill.name().to_string(),
                input,
                // Scoped by the caller: the same key from two callers is two requests.
                idempotency_key: Some(caller.principal.scoped_key(&key)),
                started_by: caller.principal.to_string(),
            })
            .await;
        let outcome = match started {
            Ok(outcome) => outcome,
            Err(StartError::IdempotencyConflict { existing, .. }) => {
                let mut error = ToolError::new(
                    "idempotency_conflict",
                    format!(
                        "idempotency_key `{key}` was already used for another `{}` request with \
                         different arguments",
                        skill.name()
                    ),
                )
                .with_action(
                    "Repeat the first request's exact arguments to get its result, or use a new \
                     idempotency_key for a new request.",
                );
                if self
                    .visible(caller, existing)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                {
                    error = error.with_extra("saga_id", Value::String(existing.to_string()));
                }
                return Ok(Answer::refused(error, None));
            }
            Err(StartError::InvalidInput { message, .. }) => {
                return Ok(Answer::refused(
                    ToolError::invalid(schema::field_in_message(&message), message),
                    None,
                ))
            }
            Err(StartError::UnknownSkill(name)) => {
                return Err(McpError::invalid_params(
                    format!("unknown tool `{name}`"),
                    None,
                ))
            }
            Err(StartError::Store(e)) => return Ok(Answer::refused(unavailable(e), None)),
        };
        let id = outcome.saga.id;
        if !outcome.created {
            // The key matched an existing saga with the same input: it is the answer, if it
            // is the caller's to see.
            match self.visible(caller, id).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Ok(Answer::refused(
                        ToolError::new(
                            "idempotency_conflict",
                            format!("idempotency_key `{key}` is already in use"),
                        )
                        .with_action("Use a new idempotency_key."),
                        None,
                    ))
                }
                Err(e) => return Ok(Answer::refused(unavailable(e), Some(id))),
            }
        }

        // A 2026-07-28 client repeating the call with answers to the input it was asked for:
        // the same arguments and key found the same saga; the answers go to its wait.
        let mut answered = None;
        if let Some(state) = &retry.state {
            match self.answer_retry(caller, id, state, &retry.responses).await {
                Ok(Some(handled)) => answered = Some(handled),
                Ok(None) => {}
                Err(error) => return Ok(Answer::refused(error, Some(id))),
            }
        }
        let detail = match self
            .wait_for(id, ctx, answered.as_ref().map(|a| a.handle.as_str()))
            .await
        {
            Ok(detail) => detail,
            Err(e) => return Ok(Answer::refused(unavailable(e), Some(id))),
        };
        // Still running after the wait bound, and the client declared the tasks extension:
        // hand it a task whose id is the saga id (answered from PostgreSQL by tasks/get; a
        // wait for input is the task's `input_required` state).
        if !detail.status.is_terminal() && client_wants_tasks(ctx) {
            return Ok(Answer {
                response: CreateTaskResult::new(tasks::task_of(&detail, &caller.principal)).into(),
                outcome: Outcome::Pending,
                error_code: None,
                saga_id: Some(id),
            });
        }
        let asked_enough = answered.as_ref().is_some_and(|a| !a.ask_again);
        match crate::input::PendingInput::of(&detail) {
            Some(pending) if !asked_enough => {
                self.ask_for_input(caller, detail, pending, ctx).await
            }
            _ => {
                let result = saga_report(&detail).into_result();
                Ok(Answer::saga(&detail, result))
            }
        }
    }

    /// Waits up to the facade's bound for the saga to end or to wait for input (other than the
    /// wait `answered`, just answered, which the saga has yet to leave), sending progress
    /// notifications when the request carried a progress token; returns the saga as it is then.
    pub(super) async fn wait_for(
        &self,
        id: Uuid,
        ctx: &RequestContext<RoleServer>,
        answered: Option<&str>,
    ) -> Result<SagaDetail, StoreError> {
        let engine = &self.facade.engine;
        let deadline = Instant::now() + self.facade.wait;
        let token = ctx.meta.get_progress_token();
        let mut reported: Option<(usize, SagaStatus)> = None;
        let mut last_progress = Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            let summary = tokio::select! {
                summary = engine.store().summary(id) => summary?.ok_or(StoreError::NotFound(id))?,
                _ = ctx.ct.cancelled() => break,
            };
            if summary.status.is_terminal() {
                break;
            }
            if summary.status == SagaStatus::Waiting {
                let detail = engine.detail(id).await?.ok_or(StoreError::NotFound(id))?;
                if let Some(pending) = crate::input::PendingInput::of(&detail) {
                    if Some(pending.handle.as_str()) != answered {
                        return Ok(detail);
                    }
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            if let Some(token) = &token {
                if last_progress.elapsed() >= Duration::from_millis(250) {
                    last_progress = Instant::now();
                    let Some(detail) = engine.detail(id).await? else {
                        return Err(StoreError::NotFound(id));
                    };
                    let now = (detail.steps_done(), detail.status);
                    if reported != Some(now) {
                        reported = Some(now);
                        let message = match detail.status {
                            SagaStatus::Compensating => "undoing the steps done".to_string(),
                            status => {
                                format!("{status}: {} of {} steps done", now.0, detail.steps.len())
                            }
                        };
                        let progress = ProgressNotificationParam::new(token.clone(), now.0 as f64)
                            .with_total(detail.steps.len() as f64)
                            .with_message(message);
                        if let Err(e) = ctx.peer.notify_progress(progress).await {
                            tracing::debug!(error = %e, "could not send a progress notification");
                        }
                    }
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            tokio::select! {
                _ = tokio::time::sleep(pause.min(remaining)) => {}
                _ = ctx.ct.cancelled() => break,
            }
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        engine.detail(id).await?.ok_or(StoreError::NotFound(id))
    }

    pub(super) async fn call_query(
        &self,
        caller: &Caller,
        query: Arc<Query>,
        access: Access,
        mut args: JsonObject,
    ) -> Call {
        if let Err(e) = enforce_subject(&caller.principal, &access, &mut args) {
            return Ok(Answer::refused(e, None));
        }
        fill_caller_field(&caller.principal, query.exposure(), &mut args);
        let input = Value::Object(args);
        if let Err(e) = check_input(query.input_schema(), &input, |v| query.validate(v)) {
            return Ok(Answer::refused(e, None));
        }
        match query.call(input).await {
            Ok(output) => {
                let structured = if crate::tools::query_output_is_object(&query) {
                    output
                } else {
                    json!({ "result": output })
                };
                Ok(Answer::ok(CallToolResult::structured(structured), None))
            }
            Err(e) => {
                let mut error = ToolError::new(e.code.clone(), e.message.clone());
                error.action = e.action.clone();
                // A rule the query checks itself (e.g. a date against today) names its field
                // like input validation does: "`field`: ...".
                if e.code == "invalid_input" {
                    error.field = crate::results::field_named(&e.message);
                }
                if e.is_retryable() && error.action.is_none() {
                    error.action =
                        Some("A system it depends on did not answer; call again shortly.".into());
                }
                Ok(Answer::refused(error, None))
            }
        }
    }
}

/// Self-service callers act only on their own data: the subject field is filled from the
/// principal when absent and must be the principal's subject when present.
pub(super) fn enforce_subject(
    principal: &Principal,
    access: &Access,
    args: &mut JsonObject,
) -> Result<(), ToolError> {
    let Access::SelfService { field } = access else {
        return Ok(());
    };
    let Some(field) = field else {
        return Err(ToolError::forbidden(
            "this tool has no field that names whose data it touches, so the caller's role may \
             not use it on its own behalf",
        ));
    };
    match args.get(field.as_str()) {
        None | Some(Value::Null) => {
            args.insert(
                field.clone(),
                Value::String(principal.subject().to_string()),
            );
            Ok(())
        }
        Some(Value::String(given)) if given.eq_ignore_ascii_case(principal.subject()) => {
            args.insert(
                field.clone(),
                Value::String(principal.subject().to_string()),
            );
            Ok(())
        }
        Some(_) => Err(ToolError {
            field: Some(field.clone()),
            ..ToolError::forbidden(format!(
                "as a {} you may act only on your own data: `{field}` must be {} (or left out)",
                principal.role().name(),
                principal.subject()
            ))
        }),
    }
}

/// Who acted is recorded from the caller's identity, never from what a model typed: the
/// exposure's `caller_field` is always set to the caller's subject.
pub(super) fn fill_caller_field(principal: &Principal, exposure: &Exposure, args: &mut JsonObject) {
    if let Some(field) = &exposure.caller_field {
        args.insert(
            field.clone(),
            Value::String(principal.subject().to_string()),
        );
    }
}

/// Checks arguments against the schema (naming the field) and then the skill's own rules.
pub(super) fn check_input(
    schema_value: &Value,
    input: &Value,
    validate: impl Fn(&Value) -> Result<(), stepwise_engine::InputError>,
) -> Result<(), ToolError> {
    let schema = schema::normalize(schema_value);
    if let Value::Object(args) = input {
        if let Err((field, message)) = schema::check_arguments(&schema, args) {
            return Err(ToolError::invalid(Some(field), message));
        }
    }
    validate(input).map_err(|e| {
        let field = e
            .field
            .clone()
            .or_else(|| schema::field_in_message(&e.message));
        ToolError::invalid(field, e.message)
    })
}

pub(super) fn client_wants_tasks(ctx: &RequestContext<RoleServer>) -> bool {
    ctx.client_capabilities()
        .is_some_and(|caps| caps.supports_tasks())
}
