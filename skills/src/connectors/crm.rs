//! A Salesforce-style CRM/PMS client: sObject REST (create, retrieve, update, upsert by
//! external id) and SOQL queries.
//!
//! SOQL is built with [`soql`]'s literal functions only: values are escaped as SOQL string
//! literals (or checked as ids and dates), never spliced raw, so a guest's email cannot change
//! a query.

use super::config::ServiceConfig;
use super::error::{read_body, ConnectorError, Service};
use super::limits::{self, Permit, SharedLimits};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// The REST API version the connector speaks.
pub const API_VERSION: &str = "v60.0";

#[derive(Debug, Clone)]
pub struct CrmClient {
    http: reqwest::Client,
    base_url: String,
    access_token: String,
    /// The shared rate limits asked before every call, if any.
    limits: Option<SharedLimits>,
}

/// What an upsert did.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Upserted {
    pub id: String,
    #[serde(default)]
    pub created: bool,
}

#[derive(Debug, Deserialize)]
struct QueryResult<T> {
    records: Vec<T>,
}

impl CrmClient {
    pub fn new(http: reqwest::Client, config: &ServiceConfig) -> Self {
        Self {
            http,
            base_url: format!("{}/services/data/{API_VERSION}", config.base_url),
            access_token: config.credential.clone(),
            limits: None,
        }
    }

    /// The same client, asking `limits` before every call.
    pub fn with_limits(mut self, limits: SharedLimits) -> Self {
        self.limits = Some(limits);
        self
    }

    async fn permit(&self) -> Result<Permit, ConnectorError> {
        limits::permit(self.limits.as_ref(), Service::Crm).await
    }

    /// `base/segment/segment...`, each segment percent-encoded (external ids may hold `@`, `+`,
    /// `%` or `:`; nothing in a value can add a path segment).
    fn url(&self, segments: &[&str]) -> Result<reqwest::Url, ConnectorError> {
        let mut url = reqwest::Url::parse(&self.base_url)
            .map_err(|e| ConnectorError::Setup(format!("CRM base URL `{}`: {e}", self.base_url)))?;
        url.path_segments_mut()
            .map_err(|()| {
                ConnectorError::Setup(format!(
                    "CRM base URL `{}` cannot have a path",
                    self.base_url
                ))
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Runs a SOQL query built with [`soql`] literals.
    pub async fn query<T: DeserializeOwned>(&self, soql: &str) -> Result<Vec<T>, ConnectorError> {
        let _permit = self.permit().await?;
        let response = self
            .http
            .get(format!("{}/query", self.base_url))
            .bearer_auth(&self.access_token)
            .query(&[("q", soql)])
            .send()
            .await
            .map_err(|e| ConnectorError::transport(Service::Crm, false, e))?;
        let result: QueryResult<T> = decode(read(response, false).await?)?;
        Ok(result.records)
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        sobject: &str,
        id: &str,
    ) -> Result<T, ConnectorError> {
        let url = self.url(&["sobjects", sobject, soql::id(id)?])?;
        let _permit = self.permit().await?;
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.access_token)
            .send()
            .await
            .map_err(|e| ConnectorError::transport(Service::Crm, false, e))?;
        decode(read(response, false).await?)
    }

    /// The id of the record whose external id `field` is `value`, if there is one: how the undo
    /// of a step whose answer was lost finds what its upsert may have created.
    pub async fn find_by_external_id(
        &self,
        sobject: &str,
        field: &str,
        value: &str,
    ) -> Result<Option<String>, ConnectorError> {
        let url = self.url(&["sobjects", sobject, field, value])?;
        let _permit = self.permit().await?;
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.access_token)
            .send()
            .await
            .map_err(|e| ConnectorError::transport(Service::Crm, false, e))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let record = read(response, false).await?;
        Ok(record.get("Id").and_then(Value::as_str).map(str::to_string))
    }

    /// Updates fields of a record.
    pub async fn update(
        &self,
        sobject: &str,
        id: &str,
        fields: &Value,
    ) -> Result<(), ConnectorError> {
        let url = self.url(&["sobjects", sobject, soql::id(id)?])?;
        let _permit = self.permit().await?;
        let response = self
            .http
            .patch(url)
            .bearer_auth(&self.access_token)
            .json(fields)
            .send()
            .await
            .map_err(|e| ConnectorError::transport(Service::Crm, true, e))?;
        read(response, true).await.map(|_| ())
    }

    /// Deletes a record; one already deleted is not an error (undos run more than once).
    pub async fn delete(&self, sobject: &str, id: &str) -> Result<(), ConnectorError> {
        let url = self.url(&["sobjects", sobject, soql::id(id)?])?;
        let _permit = self.permit().await?;
        let response = self
            .http
            .delete(url)
            .bearer_auth(&self.access_token)
            .send()
            .await
            .map_err(|e| ConnectorError::transport(Service::Crm, true, e))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        read(response, true).await.map(|_| ())
    }

    /// Creates the record whose external id `field` is `value`, or updates it: the way every
    /// mutating step creates records, so a re-run step finds its own record.
    pub async fn upsert(
        &self,
        sobject: &str,
        field: &str,
        value: &str,
        fields: &Value,
    ) -> Result<Upserted, ConnectorError> {
        let url = self.url(&["sobjects", sobject, field, value])?;
        let _permit = self.permit().await?;
        let response = self
            .http
            .patch(url)
            .bearer_auth(&self.access_token)
            .json(fields)
            .send()
            .await
            .map_err(|e| ConnectorError::transport(Service::Crm, true, e))?;
        decode(read(response, true).await?)
    }
}

/// The answer's body, or its error. `write`: the request changes something.
async fn read(response: reqwest::Response, write: bool) -> Result<Value, ConnectorError> {
    let answer = read_body(Service::Crm, write, response).await?;
    let (status, body) = (answer.status, answer.body);
    if (200..300).contains(&status) {
        return Ok(body);
    }
    // Salesforce errors: [{"message","errorCode","fields"}]
    let first = body.get(0).cloned().unwrap_or(Value::Null);
    let text = |key: &str| first.get(key).and_then(Value::as_str).map(str::to_string);
    Err(ConnectorError::Api {
        service: Service::Crm,
        status,
        code: text("errorCode").unwrap_or_else(|| format!("http_{status}")),
        message: text("message").unwrap_or_else(|| format!("HTTP {status}")),
        body,
        write,
        retry_after: answer.retry_after,
    })
}

fn decode<T: DeserializeOwned>(body: Value) -> Result<T, ConnectorError> {
    serde_json::from_value(body).map_err(|e| ConnectorError::Decode {
        service: Service::Crm,
        message: e.to_string(),
    })
}

/// Building SOQL safely.
pub mod soql {
    use super::ConnectorError;
    use super::Service;
    use chrono::NaiveDate;

    /// A SOQL string literal: quoted, with `\` and `'` escaped and control characters refused
    /// by construction (they are escaped too).
    pub fn string(value: &str) -> String {
        let mut out = String::with_capacity(value.len() + 2);
        out.push('\'');
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\'' => out.push_str("\\'"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '"' => out.push_str("\\\""),
                c => out.push(c),
            }
        }
        out.push('\'');
        out
    }

    /// A SOQL date literal (unquoted `YYYY-MM-DD`).
    pub fn date(value: NaiveDate) -> String {
        value.format("%Y-%m-%d").to_string()
    }

    /// A record id, checked (15 or 18 alphanumerics) and quoted.
    pub fn id_literal(value: &str) -> Result<String, ConnectorError> {
        id(value).map(|id| format!("'{id}'"))
    }

    /// A record id, checked: 15 or 18 ASCII alphanumerics.
    pub fn id(value: &str) -> Result<&str, ConnectorError> {
        if matches!(value.len(), 15 | 18) && value.chars().all(|c| c.is_ascii_alphanumeric()) {
            Ok(value)
        } else {
            Err(ConnectorError::Decode {
                service: Service::Crm,
                message: format!("`{value}` is not a record id"),
            })
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn string_literals_cannot_end_early() {
            assert_eq!(string("a'b"), "'a\\'b'");
            assert_eq!(string("x\\' OR Name != '"), "'x\\\\\\' OR Name != \\''");
            assert_eq!(string("plain@example.com"), "'plain@example.com'");
        }

        #[test]
        fn ids_are_checked() {
            assert!(id("a0200000000000001A").is_ok());
            assert!(id("a02' OR Id != '").is_err());
            assert!(id("short").is_err());
        }
    }
}
