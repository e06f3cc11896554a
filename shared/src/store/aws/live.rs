//! Live connections on AWS: one item per open WebSocket connection in the table
//! (`LIVE#<user>` / `CONN#<connection>`, with `expires_at` for DynamoDB's TTL), and posts
//! through the WebSocket API's management endpoint.

use aws_sdk_apigatewaymanagement::operation::post_to_connection::PostToConnectionError;
use aws_sdk_apigatewaymanagement::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;

use super::dynamo::{backend, key_map};
use crate::domain::{ConnectionId, UserId};
use crate::error::StoreError;
use crate::ports::{ConnectionPoster, ConnectionRegistry, PostError};
use crate::protocol::keys;

/// The TTL attribute the table's `TimeToLiveSpecification` names.
pub const EXPIRES_AT: &str = "expires_at";

#[derive(Clone)]
pub struct DynamoConnections {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoConnections {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

impl ConnectionRegistry for DynamoConnections {
    async fn add(
        &self,
        user: &UserId,
        connection: &ConnectionId,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        let mut item = key_map(&keys::live_connection(user, connection));
        item.insert(EXPIRES_AT.into(), AttributeValue::N(expires_at.to_string()));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn remove(&self, user: &UserId, connection: &ConnectionId) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_map(&keys::live_connection(user, connection))))
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn list(&self, user: &UserId, limit: usize) -> Result<Vec<ConnectionId>, StoreError> {
        let page = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", AttributeValue::S(keys::live_pk(user)))
            .expression_attribute_values(
                ":prefix",
                AttributeValue::S(keys::LIVE_CONNECTION_PREFIX.into()),
            )
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(backend)?;
        Ok(page
            .items()
            .iter()
            .filter_map(|m| match m.get("sk") {
                Some(AttributeValue::S(sk)) => sk
                    .strip_prefix(keys::LIVE_CONNECTION_PREFIX)
                    .and_then(|c| c.parse().ok()),
                _ => None,
            })
            .collect())
    }
}

/// Posts through `https://{api-id}.execute-api.{region}.amazonaws.com/{stage}`.
#[derive(Clone)]
pub struct ManagementApi {
    client: aws_sdk_apigatewaymanagement::Client,
}

impl ManagementApi {
    pub fn new(client: aws_sdk_apigatewaymanagement::Client) -> Self {
        Self { client }
    }
}

impl ConnectionPoster for ManagementApi {
    async fn post(&self, connection: &ConnectionId, body: &[u8]) -> Result<(), PostError> {
        match self
            .client
            .post_to_connection()
            .connection_id(connection.as_str())
            .data(Blob::new(body))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(PostToConnectionError::GoneException(_))
                ) =>
            {
                Err(PostError::Gone)
            }
            Err(e) => Err(PostError::Store(backend(e))),
        }
    }
}
