//! Clients of the Registry, Fleet and Compliance services, which want a
//! bearer token (docs/architecture.md, "People and tenancy"); telemetry needs
//! none.

use std::future::Future;
use std::time::Duration;

use pentrace_proto::v1::compliance_client::ComplianceClient;
use pentrace_proto::v1::fleet_client::FleetClient;
use pentrace_proto::v1::registry_client::RegistryClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::config::SimConfig;
use crate::driver::{backoff, grpc_channel};
use crate::error::SimError;

/// Adds `authorization: Bearer <token>` to every call, when there is one.
#[derive(Debug, Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

/// A connection to the query and administration services.
#[derive(Debug, Clone)]
pub struct Api {
    channel: Channel,
    bearer: Bearer,
}

impl Api {
    /// Connects to `config.grpc_url` with `config.token`.
    pub async fn connect(config: &SimConfig) -> Result<Api, SimError> {
        let bearer = match config.token.as_deref().map(str::trim) {
            Some(token) if !token.is_empty() => {
                let value = format!("Bearer {token}").parse().map_err(|_| {
                    SimError::Config("the token has characters a header cannot carry".into())
                })?;
                Bearer(Some(value))
            }
            _ => Bearer(None),
        };
        Ok(Api {
            channel: grpc_channel(&config.grpc_url, crate::driver::ca_pem(config)?.as_deref())
                .await?,
            bearer,
        })
    }

    pub fn registry(&self) -> RegistryClient<Authed> {
        RegistryClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    pub fn fleet(&self) -> FleetClient<Authed> {
        FleetClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    pub fn compliance(&self) -> ComplianceClient<Authed> {
        ComplianceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
}

/// Runs an idempotent step again while the server is briefly unreachable
/// (e.g. restarting), for at most `patience`.
pub async fn retrying<T, F, Fut>(patience: Duration, mut step: F) -> Result<T, SimError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SimError>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    let mut attempt = 0;
    loop {
        match step().await {
            Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                attempt += 1;
                tokio::time::sleep(backoff(attempt, 0.5)).await;
            }
            done => return done,
        }
    }
}
