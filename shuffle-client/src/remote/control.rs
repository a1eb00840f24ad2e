//! The gRPC control plane, from the client side.

use protocol::net::proto::shuffle_control_client::ShuffleControlClient;
use protocol::ServiceError;
use tonic::transport::Channel;
use tonic::Code;

use crate::ClientError;

/// A control-plane client for one server.
#[derive(Clone, Debug)]
pub(crate) struct Control {
    pub client: ShuffleControlClient<Channel>,
    pub server: String,
}

impl Control {
    /// Connects lazily: the channel dials on first use and redials after
    /// failures. Each call waits at most `request_timeout` (then fails as a
    /// `Connection` error, retried by the policy).
    pub fn new(
        server: String,
        authority: &str,
        connect_timeout: std::time::Duration,
        request_timeout: std::time::Duration,
    ) -> Result<Self, ClientError> {
        let endpoint = Channel::from_shared(format!("http://{authority}"))
            .map_err(|e| ClientError::Connection {
                server: server.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            .tcp_nodelay(true);
        Ok(Control {
            client: ShuffleControlClient::new(endpoint.connect_lazy()),
            server,
        })
    }

    /// The typed error behind a status: the server's encoded details when
    /// present, else one derived from the code.
    pub fn error(&self, status: tonic::Status) -> ClientError {
        if !status.details().is_empty() {
            let mut details = bytes::Bytes::copy_from_slice(status.details());
            if let Ok(err) = ServiceError::decode(&mut details) {
                return ClientError::from_service(err, &self.server);
            }
        }
        let server = self.server.clone();
        // A status without a message (an older server that does not know
        // the call answers a bare Unimplemented) still says what it was.
        let reason = match status.message() {
            "" => format!("{:?} with no message", status.code()),
            m => format!("{m} ({:?})", status.code()),
        };
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                ClientError::Connection { server, reason }
            }
            Code::ResourceExhausted => ClientError::Busy { server, reason },
            _ => ClientError::Internal { server, reason },
        }
    }
}
