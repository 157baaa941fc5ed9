//! Answers to waits for input (crate::input has the eras): the `provide_input` tool,
//! `tasks/update`, the answers a 2026-07-28 client sends when it repeats a call, and
//! `elicitation/create` during a call. Every answer goes through [`StepwiseServer::deliver_input`],
//! which decides who may answer, and is audited, refusals included.

use super::*;
use crate::input::{event_of_request_key, PendingInput};
use control::{no_such_saga, saga_id_arg};
use rmcp::model::{
    ElicitRequestParams, ElicitResult, ElicitationAction, InputRequiredResult, ProtocolVersion,
    UpdateTaskParams,
};
use rmcp::service::ElicitationMode;
use stepwise_engine::{DeliverError, Delivery, EventKind};

/// How an answer outside the `provide_input` tool reached the facade: the tool name of its
/// audit row.
#[derive(Debug, Clone, Copy)]
pub(super) enum Via {
    TaskUpdate,
    Retry,
    Elicitation,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::TaskUpdate => "tasks/update",
            Via::Retry => "tools/call inputResponses",
            Via::Elicitation => "elicitation/create",
        }
    }

    /// The delivery key an answer through this way gets when the caller names none: one per
    /// wait (`handle`), so the same answer twice is a duplicate and another answer a conflict.
    fn key(self, handle: &str) -> String {
        match self {
            Via::TaskUpdate => format!("task/{handle}"),
            Via::Retry => format!("mrtr/{handle}"),
            Via::Elicitation => format!("elicitation/{handle}"),
        }
    }
}

/// What the answers of a repeated call did to the wait it was asked about.
pub(super) struct Answered {
    /// The wait answered (the saga may still show it until a worker picks the event up).
    pub handle: String,
    /// Whether this call may ask for that wait again: not after a URL was accepted (the answer
    /// comes from the page) nor after the person declined.
    pub ask_again: bool,
}

impl StepwiseServer {
    /// Delivers `payload` as `event` to saga `id` for `caller`, under the caller's own `key`
    /// (scoped like idempotency keys). Who may: when the saga waits for that event, the wait's
    /// answerers ([`PendingInput::may_answer`]); otherwise only a repeat of a key already used
    /// (reported as a duplicate or a conflict) or an operator (the event is kept for a later
    /// wait). Returns the delivery and the saga as it was before it.
    pub(super) async fn deliver_input(
        &self,
        caller: &Caller,
        id: Uuid,
        event: &str,
        payload: Value,
        key: &str,
    ) -> Result<(Delivery, SagaDetail), ToolError> {
        let detail = match self.visible(caller, id).await {
            Ok(Some(detail)) => detail,
            Ok(None) => return Err(no_such_saga(id)),
            Err(e) => return Err(unavailable(e)),
        };
        let scoped = caller.principal.scoped_key(key);
        let pending = PendingInput::of(&detail).filter(|p| p.event == event);
        let used_before = detail.events.iter().any(|e| {
            e.kind == EventKind::EventReceived
                && e.detail
                    .as_ref()
                    .and_then(|d| d.get("key"))
                    .and_then(Value::as_str)
                    == Some(scoped.as_str())
        });
        let operator = caller.principal.role().name() == Role::OPERATOR;
        match &pending {
            Some(p) if !p.may_answer(&caller.principal, &detail.started_by) => {
                return Err(ToolError::forbidden(format!(
                    "saga {id} waits for `{event}` from {}; as {} you may not give it",
                    p.answered_by(),
                    caller.principal
                ))
                .with_action(format!("Ask {} to answer.", p.answered_by())));
            }
            Some(_) => {}
            None if used_before || operator || detail.status.is_terminal() => {}
            None => {
                let now = match PendingInput::of(&detail) {
                    Some(other) => format!("it waits for `{}`", other.event),
                    None => format!("it is {}", detail.status),
                };
                return Err(ToolError::new(
                    "not_waiting",
                    format!("saga {id} is not waiting for `{event}` ({now})"),
                )
                .with_action("get_saga_status shows what the saga waits for, if anything."));
            }
        }
        match self
            .facade
            .engine
            .deliver(id, event, payload, &scoped, &caller.principal.to_string())
            .await
        {
            Ok(delivery) => Ok((delivery, detail)),
            Err(e) => Err(deliver_error(e, key)),
        }
    }

    /// Audits an answer given outside the `provide_input` tool (which its call's row records).
    async fn audit_answer(
        &self,
        caller: &Caller,
        via: Via,
        id: Uuid,
        result: &Result<(Delivery, SagaDetail), ToolError>,
        started: Instant,
    ) {
        let answer = match result {
            Ok(_) => Answer::ok(CallToolResult::success(vec![]), Some(id)),
            Err(error) => Answer::refused(error.clone(), Some(id)),
        };
        self.audit(caller, via.name(), &answer, started).await;
    }

    /// Offers a wait for input to the client of this call, in the form its era understands
    /// (crate::input), or reports the saga as waiting. Only a caller who may answer is asked.
    pub(super) async fn ask_for_input(
        &self,
        caller: &Caller,
        mut detail: SagaDetail,
        mut pending: PendingInput,
        ctx: &RequestContext<RoleServer>,
    ) -> Call {
        let modern = ctx
            .protocol_version()
            .is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str());
        // An older client that answers elicitations may be asked again when the saga reaches
        // another wait; bounded, as a saga may wait many times.
        for _ in 0..8 {
            if !pending.may_answer(&caller.principal, &detail.started_by) {
                break;
            }
            if modern {
                let requests = pending.input_requests();
                if requests.is_empty() {
                    break;
                }
                return Ok(Answer {
                    response: InputRequiredResult::new(Some(requests), Some(pending.handle)).into(),
                    outcome: Outcome::Pending,
                    error_code: None,
                    saga_id: Some(detail.id),
                });
            }
            let Some(params) = pending.elicitation() else {
                break;
            };
            let mode = match params {
                ElicitRequestParams::UrlElicitationParams { .. } => ElicitationMode::Url,
                _ => ElicitationMode::Form,
            };
            if !ctx.peer.supported_elicitation_modes().contains(&mode) {
                break;
            }
            let Some(answered) = self.elicit(caller, &pending, params, ctx).await? else {
                break;
            };
            detail = match self.wait_for(detail.id, ctx, Some(&answered.handle)).await {
                Ok(detail) => detail,
                Err(e) => return Ok(Answer::refused(unavailable(e), Some(detail.id))),
            };
            match PendingInput::of(&detail) {
                Some(next) if answered.ask_again && next.handle != answered.handle => {
                    pending = next
                }
                _ => break,
            }
        }
        let result = saga_report(&detail).into_result();
        Ok(Answer::saga(&detail, result))
    }

    /// Sends `elicitation/create` for a wait and delivers a form's answer. `None` when nothing
    /// came back (declined, cancelled, no answer before the wait's deadline, or the request
    /// failed); an invalid answer is a tool error naming the field.
    async fn elicit(
        &self,
        caller: &Caller,
        pending: &PendingInput,
        params: ElicitRequestParams,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Option<Answered>, McpError> {
        // The human has until the wait's deadline; an answer after it would come too late.
        let timeout = chrono::DateTime::parse_from_rfc3339(&pending.until)
            .ok()
            .and_then(|until| {
                (until.with_timezone(&chrono::Utc) - self.facade.engine.clock().now())
                    .to_std()
                    .ok()
            })
            .unwrap_or(self.facade.wait);
        let url = matches!(params, ElicitRequestParams::UrlElicitationParams { .. });
        let asked = ctx
            .peer
            .create_elicitation_with_timeout(params, Some(timeout));
        let result = tokio::select! {
            result = asked => result,
            _ = ctx.ct.cancelled() => return Ok(None),
        };
        let result = match result {
            Ok(result) => result,
            Err(e) => {
                tracing::info!(error = %e, saga = %pending.saga_id, "elicitation got no answer");
                return Ok(None);
            }
        };
        match (result.action, url) {
            (ElicitationAction::Accept, true) => Ok(Some(Answered {
                handle: pending.handle.clone(),
                ask_again: false,
            })),
            (ElicitationAction::Accept, false) => {
                let started = Instant::now();
                let payload = result.content.unwrap_or_else(|| json!({}));
                let key = Via::Elicitation.key(&pending.handle);
                let delivered = self
                    .deliver_input(caller, pending.saga_id, &pending.event, payload, &key)
                    .await;
                self.audit_answer(
                    caller,
                    Via::Elicitation,
                    pending.saga_id,
                    &delivered,
                    started,
                )
                .await;
                match delivered {
                    Ok(_) => Ok(Some(Answered {
                        handle: pending.handle.clone(),
                        ask_again: true,
                    })),
                    Err(error) => Err(McpError::invalid_params(
                        error.message.clone(),
                        Some(error.to_json()),
                    )),
                }
            }
            _ => Ok(None),
        }
    }

    /// The answers of a repeated 2026-07-28 call: delivered when `state` is the handle of the
    /// wait the saga is in and the answers hold that wait's key; ignored otherwise (the wait is
    /// over, so the call reports the saga as it is now).
    pub(super) async fn answer_retry(
        &self,
        caller: &Caller,
        id: Uuid,
        state: &str,
        responses: &InputResponses,
    ) -> Result<Option<Answered>, ToolError> {
        let detail = match self.visible(caller, id).await {
            Ok(Some(detail)) => detail,
            Ok(None) => return Err(no_such_saga(id)),
            Err(e) => return Err(unavailable(e)),
        };
        let Some(pending) = PendingInput::of(&detail).filter(|p| p.handle == state) else {
            return Ok(None);
        };
        let Some(response) = responses.get(&pending.request_key()) else {
            return Ok(None);
        };
        let result: ElicitResult = serde_json::from_value(response.clone()).map_err(|e| {
            ToolError::invalid(
                Some("inputResponses".into()),
                format!("is not an elicitation result: {e}"),
            )
        })?;
        let handle = pending.handle.clone();
        if result.action != ElicitationAction::Accept || pending.url.is_some() {
            return Ok(Some(Answered {
                handle,
                ask_again: false,
            }));
        }
        let started = Instant::now();
        let payload = result.content.unwrap_or_else(|| json!({}));
        let delivered = self
            .deliver_input(
                caller,
                id,
                &pending.event,
                payload,
                &Via::Retry.key(&handle),
            )
            .await;
        self.audit_answer(caller, Via::Retry, id, &delivered, started)
            .await;
        delivered.map(|_| {
            Some(Answered {
                handle,
                ask_again: true,
            })
        })
    }

    /// `tasks/update`: each answer whose key is a wait's input request is delivered (a form
    /// accepted); a URL accepted, a decline or a cancel deliver nothing.
    pub(super) async fn update_task_input(
        &self,
        caller: &Caller,
        request: UpdateTaskParams,
    ) -> Result<(), McpError> {
        let started = Instant::now();
        let read = self.task_saga(caller, &request.task_id).await;
        if read.is_err() {
            self.audit_read(
                caller,
                Via::TaskUpdate.name(),
                &request.task_id,
                &read,
                started,
            )
            .await;
        }
        let detail = read?;
        for (key, value) in &request.input_responses {
            let Some(event) = event_of_request_key(key) else {
                return Err(McpError::invalid_params(
                    format!("`{key}` is not an input request of task {}", detail.id),
                    None,
                ));
            };
            let result: ElicitResult = serde_json::from_value(value.clone()).map_err(|e| {
                McpError::invalid_params(
                    format!("the response to `{key}` is not an elicitation result: {e}"),
                    None,
                )
            })?;
            let pending = PendingInput::of(&detail).filter(|p| p.request_key() == *key);
            let url = pending.as_ref().is_some_and(|p| p.url.is_some());
            if result.action != ElicitationAction::Accept || url {
                continue;
            }
            let handle = key.rsplit_once('@').map(|(_, h)| h).unwrap_or(key);
            let payload = result.content.unwrap_or_else(|| json!({}));
            let delivered = self
                .deliver_input(
                    caller,
                    detail.id,
                    event,
                    payload,
                    &Via::TaskUpdate.key(handle),
                )
                .await;
            self.audit_answer(caller, Via::TaskUpdate, detail.id, &delivered, started)
                .await;
            if let Err(error) = delivered {
                let data = Some(error.to_json());
                return Err(match error.code.as_str() {
                    "unavailable" => McpError::internal_error(error.message, data),
                    "forbidden" => McpError::invalid_request(error.message, data),
                    _ => McpError::invalid_params(error.message, data),
                });
            }
        }
        Ok(())
    }

    /// The `provide_input` tool: delivers `data` as `event`, then waits like a skill call and
    /// reports the saga (a status read: not an error when the saga then fails).
    pub(super) async fn provide_input(
        &self,
        caller: &Caller,
        args: &JsonObject,
        ctx: &RequestContext<RoleServer>,
    ) -> Call {
        let id = match saga_id_arg(args) {
            Ok(id) => id,
            Err(e) => return Ok(Answer::refused(e, None)),
        };
        let Some(event) = args
            .get("event")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
        else {
            return Ok(Answer::refused(
                ToolError::invalid(Some("event".into()), "is required"),
                Some(id),
            ));
        };
        let key = match args.get(IDEMPOTENCY_KEY) {
            Some(Value::String(k)) if !k.trim().is_empty() && k.len() <= 200 => k.clone(),
            _ => {
                return Ok(Answer::refused(
                    ToolError::invalid(
                        Some(IDEMPOTENCY_KEY.into()),
                        "is required (1 to 200 characters): pick a new key for each answer, \
                         and reuse it only to repeat the same answer",
                    ),
                    Some(id),
                ))
            }
        };
        let data = args.get("data").cloned().unwrap_or_else(|| json!({}));
        let (delivery, before) = match self
            .deliver_input(caller, id, event, data, &format!("tool/{key}"))
            .await
        {
            Ok(done) => done,
            Err(error) => return Ok(Answer::refused(error, Some(id))),
        };
        let answered = PendingInput::of(&before)
            .filter(|p| p.event == event)
            .map(|p| p.handle);
        let detail = match self.wait_for(id, ctx, answered.as_deref()).await {
            Ok(detail) => detail,
            Err(e) => return Ok(Answer::refused(unavailable(e), Some(id))),
        };
        let (mut value, text) = status_value(&caller.principal, &detail, None);
        if let Value::Object(map) = &mut value {
            map.insert(
                "input".into(),
                json!({"event": delivery.event, "idempotency_key": key, "duplicate": delivery.duplicate}),
            );
        }
        let head = if delivery.duplicate {
            format!("This `{event}` answer was given before (same idempotency_key and data): nothing new was delivered.")
        } else {
            format!("Delivered `{event}`.")
        };
        let mut result = CallToolResult::structured(value);
        result.content = vec![ContentBlock::text(format!("{head} {text}"))];
        Ok(Answer::ok(result, Some(id)))
    }
}

/// A delivery the engine refused, as a tool error the agent can relay.
fn deliver_error(e: DeliverError, key: &str) -> ToolError {
    match e {
        DeliverError::NotFound(id) => no_such_saga(id),
        DeliverError::Terminal { saga_id, status } => ToolError::new(
            "saga_ended",
            format!("saga {saga_id} is {status}: it takes no more input"),
        )
        .with_action("Nothing was delivered; get_saga_status tells how it ended."),
        DeliverError::UnknownEvent { skill, event, .. } => ToolError::invalid(
            Some("event".into()),
            format!("no step of `{skill}` waits for event `{event}`"),
        ),
        DeliverError::Invalid { field, message, .. } => {
            let field = if field == "payload" {
                "data".to_string()
            } else {
                format!("data{field}")
            };
            ToolError::invalid(Some(field), message)
                .with_action("Nothing was delivered: correct the data and answer again.")
        }
        DeliverError::Conflict { .. } => ToolError::new(
            "idempotency_conflict",
            format!(
                "the answer `{}` was already given to this saga with other data",
                key.rsplit_once('/').map(|(_, k)| k).unwrap_or(key)
            ),
        )
        .with_action(
            "Repeat the first answer's exact data to get its result, or use a new \
             idempotency_key for a new answer.",
        ),
        DeliverError::Store(e) => unavailable(e),
    }
}
