//! The saga control tools: status, list, cancel, and the operators' replays.

use super::*;

impl StepwiseServer {
    /// The saga if it exists and the caller may see it.
    pub(super) async fn visible(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> Result<Option<SagaDetail>, StoreError> {
        Ok(self
            .facade
            .engine
            .detail(id)
            .await?
            .filter(|d| caller.principal.may_see_saga(&d.started_by)))
    }

    pub(super) async fn call_control(
        &self,
        caller: &Caller,
        control: Control,
        args: JsonObject,
        ctx: &RequestContext<RoleServer>,
    ) -> Call {
        let tool = self
            .facade
            .catalog
            .tools_for(&caller.principal)
            .into_iter()
            .find(|t| t.name == control.name());
        if let Some(tool) = &tool {
            if let Err((field, message)) = schema::check_arguments(&tool.input_schema, &args) {
                return Ok(Answer::refused(
                    ToolError::invalid(Some(field), message),
                    None,
                ));
            }
        }
        match control {
            Control::GetSagaStatus => {
                let id = match saga_id_arg(&args) {
                    Ok(id) => id,
                    Err(e) => return Ok(Answer::refused(e, None)),
                };
                match self.visible(caller, id).await {
                    Ok(Some(detail)) => {
                        let result = status_result(&caller.principal, &detail, None);
                        Ok(Answer::ok(result, Some(id)))
                    }
                    Ok(None) => Ok(Answer::refused(no_such_saga(id), None)),
                    Err(e) => Ok(Answer::refused(unavailable(e), Some(id))),
                }
            }
            Control::ListSagas => {
                let status = match args.get("status").and_then(Value::as_str) {
                    Some(s) => match s.parse::<SagaStatus>() {
                        Ok(status) => Some(status),
                        Err(_) => {
                            return Ok(Answer::refused(
                                ToolError::invalid(Some("status".into()), "is not a saga status"),
                                None,
                            ))
                        }
                    },
                    None => None,
                };
                let limit = args
                    .get("limit")
                    .and_then(Value::as_i64)
                    .unwrap_or(20)
                    .clamp(1, 200);
                let filter = SagaFilter {
                    status,
                    skill: args
                        .get("skill")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    since: None,
                    started_by: caller.principal.own_sagas_filter(),
                    limit,
                };
                match self.facade.engine.list(&filter).await {
                    Ok(mut sagas) => {
                        for saga in &mut sagas {
                            if let Some(key) = &mut saga.idempotency_key {
                                *key = caller.principal.shown_key(key).to_string();
                            }
                        }
                        let value = json!({ "sagas": sagas });
                        let mut result = CallToolResult::structured(value);
                        result.content = vec![ContentBlock::text(format!(
                            "{} saga(s): {}",
                            sagas.len(),
                            sagas
                                .iter()
                                .map(|s| format!("{} {} {}", s.id, s.skill, s.status))
                                .collect::<Vec<_>>()
                                .join("; ")
                        ))];
                        Ok(Answer::ok(result, None))
                    }
                    Err(e) => Ok(Answer::refused(unavailable(e), None)),
                }
            }
            Control::CancelSaga => {
                let id = match saga_id_arg(&args) {
                    Ok(id) => id,
                    Err(e) => return Ok(Answer::refused(e, None)),
                };
                match self.visible(caller, id).await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(Answer::refused(no_such_saga(id), None)),
                    Err(e) => return Ok(Answer::refused(unavailable(e), Some(id))),
                }
                let reason = args.get("reason").and_then(Value::as_str);
                let actor = caller.principal.to_string();
                let requested = match self.facade.engine.cancel(id, &actor, reason).await {
                    Ok(requested) => requested,
                    Err(e) => return Ok(Answer::refused(unavailable(e), Some(id))),
                };
                match self.wait_for(id, ctx, None).await {
                    Ok(detail) => Ok(Answer::ok(
                        status_result(&caller.principal, &detail, Some(requested)),
                        Some(id),
                    )),
                    Err(e) => Ok(Answer::refused(unavailable(e), Some(id))),
                }
            }
            Control::RetrySaga | Control::RestartSaga | Control::ForkSaga => {
                self.replay(control, caller, &args, ctx).await
            }
            Control::ProvideInput => self.provide_input(caller, &args, ctx).await,
        }
    }

    /// retry_saga, restart_saga, fork_saga: the engine's operator actions, recorded with the
    /// caller as the actor; then the resulting saga is waited for and reported.
    pub(super) async fn replay(
        &self,
        control: Control,
        caller: &Caller,
        args: &JsonObject,
        ctx: &RequestContext<RoleServer>,
    ) -> Call {
        let id = match saga_id_arg(args) {
            Ok(id) => id,
            Err(e) => return Ok(Answer::refused(e, None)),
        };
        let mut request = OperatorRequest::new(caller.principal.to_string());
        if let Some(reason) = args.get("reason").and_then(Value::as_str) {
            request = request.reason(reason);
        }
        if let Some(version) = args.get("to_version").and_then(Value::as_u64) {
            request = request.to_version(version.min(u32::MAX as u64) as u32);
        }
        let engine = &self.facade.engine;
        let done = match control {
            Control::RetrySaga => engine.retry(id, &request).await,
            Control::RestartSaga => engine.restart(id, &request).await,
            _ => {
                let Some(step) = args.get("from_step").and_then(Value::as_str) else {
                    return Ok(Answer::refused(
                        ToolError::invalid(Some("from_step".into()), "is required"),
                        Some(id),
                    ));
                };
                engine.fork(id, step, &request).await
            }
        };
        let summary = match done {
            Ok(summary) => summary,
            Err(e) => {
                let error = match &e {
                    OperatorError::NotFound(_) => no_such_saga(id),
                    OperatorError::UnknownStep { .. } => ToolError {
                        field: Some("from_step".into()),
                        ..ToolError::not_found(e.to_string())
                    },
                    OperatorError::UnknownVersion { .. } => ToolError {
                        field: Some("to_version".into()),
                        ..ToolError::not_found(e.to_string())
                    },
                    OperatorError::Refused(_) | OperatorError::VersionMismatch(_) => {
                        ToolError::new("replay_refused", e.to_string())
                    }
                    OperatorError::Store(store) => unavailable(store),
                };
                let mut answer = Answer::refused(error, Some(id));
                if e.is_conflict() {
                    answer.outcome = Outcome::Conflict;
                }
                return Ok(answer);
            }
        };
        match self.wait_for(summary.id, ctx, None).await {
            Ok(detail) => {
                let result = saga_report(&detail).into_result();
                Ok(Answer::saga(&detail, result))
            }
            Err(e) => Ok(Answer::refused(unavailable(e), Some(summary.id))),
        }
    }
}

pub(super) fn not_for_role(tool: &str, role: &Role) -> ToolError {
    ToolError::forbidden(format!("the {} role may not call `{tool}`", role.name()))
}

pub(super) fn no_such_saga(id: Uuid) -> ToolError {
    ToolError::not_found(format!("no saga {id} that you can see"))
}

pub(super) fn saga_id_arg(args: &JsonObject) -> Result<Uuid, ToolError> {
    match args.get("saga_id") {
        Some(Value::String(s)) => Uuid::parse_str(s.trim())
            .map_err(|_| ToolError::invalid(Some("saga_id".into()), "is not a saga id (a UUID)")),
        Some(_) => Err(ToolError::invalid(
            Some("saga_id".into()),
            "must be a string",
        )),
        None => Err(ToolError::invalid(Some("saga_id".into()), "is required")),
    }
}

/// The saga result plus the saga's identity, for `get_saga_status`, `cancel_saga` and the
/// `saga://` resource, as `viewer` is shown it (its own idempotency key without its scope). A
/// status read is not an error even when the saga failed.
pub(super) fn status_value(
    viewer: &Principal,
    detail: &SagaDetail,
    cancel_requested: Option<bool>,
) -> (Value, String) {
    let report = saga_report(detail);
    let mut value = report.structured;
    if let Value::Object(map) = &mut value {
        map.insert(
            "started_by".into(),
            Value::String(detail.started_by.clone()),
        );
        let key = detail
            .idempotency_key
            .as_deref()
            .map(|k| viewer.shown_key(k));
        map.insert("idempotency_key".into(), json!(key));
        map.insert("created_at".into(), json!(detail.created_at));
        map.insert("updated_at".into(), json!(detail.updated_at));
        if let Some(requested) = cancel_requested {
            map.insert("cancel_requested".into(), Value::Bool(requested));
        }
    }
    let mut text = report.text;
    if cancel_requested == Some(false) {
        text = format!("The saga had already ended; nothing was cancelled. {text}");
    }
    (value, text)
}

pub(super) fn status_result(
    viewer: &Principal,
    detail: &SagaDetail,
    cancel_requested: Option<bool>,
) -> CallToolResult {
    let (value, text) = status_value(viewer, detail, cancel_requested);
    let mut result = CallToolResult::structured(value);
    result.content = vec![ContentBlock::text(text)];
    result
}
