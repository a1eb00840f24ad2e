//! The gRPC control plane (tonic): apps, shuffles, commits, status.
//! Every input is validated into domain types first; a bad one gets
//! INVALID_ARGUMENT (or NOT_FOUND) with the typed error in the details.

use std::sync::Arc;

use protocol::{
    AppId, AttemptId, CommitManifest, MapId, PartitionId, Replication, ServiceError, ShuffleId, ShuffleMode,
    ShuffleSpec,
};
use tonic::{Request, Response, Status};

use crate::proto::shuffle_control_server::ShuffleControl;
use crate::proto::*;
use crate::state::Shared;
use crate::storage::CopyRole;
use crate::wire_errors::to_status;

/// The control-plane service.
#[derive(Debug, Clone)]
pub(crate) struct ControlService {
    pub shared: Arc<Shared>,
}

fn invalid(reason: impl std::fmt::Display) -> Status {
    to_status(&ServiceError::Malformed {
        reason: reason.to_string(),
    })
}

fn app_id(raw: &str) -> Result<AppId, Status> {
    AppId::new(raw).map_err(invalid)
}

impl ControlService {
    fn fail(&self, err: ServiceError) -> Status {
        self.shared.rejected(&err);
        to_status(&err)
    }

    /// Runs blocking storage work (fsync, unlink) off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&crate::storage::Store) -> Result<T, crate::ServerError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.shared.store.clone();
        match tokio::task::spawn_blocking(move || work(&store)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.fail(e.to_service_error())),
            Err(join) => Err(self.fail(ServiceError::Internal {
                reason: join.to_string(),
            })),
        }
    }

    fn expiry_reply(&self) -> HeartbeatReply {
        HeartbeatReply {
            expires_in_ms: u64::try_from(self.shared.apps.timeout().as_millis()).unwrap_or(u64::MAX),
        }
    }
}

#[tonic::async_trait]
impl ShuffleControl for ControlService {
    async fn register_app(&self, request: Request<AppRequest>) -> Result<Response<HeartbeatReply>, Status> {
        let app = app_id(&request.get_ref().app_id)?;
        self.shared.refuse_if_draining().map_err(|e| to_status(&e))?;
        self.shared.apps.touch(&app).map_err(|e| self.fail(e))?;
        Ok(Response::new(self.expiry_reply()))
    }

    async fn unregister_app(&self, request: Request<AppRequest>) -> Result<Response<Empty>, Status> {
        let app = app_id(&request.get_ref().app_id)?;
        self.shared.apps.remove(&app);
        self.blocking(move |s| s.unregister_app(&app)).await?;
        Ok(Response::new(Empty {}))
    }

    async fn heartbeat(&self, request: Request<AppRequest>) -> Result<Response<HeartbeatReply>, Status> {
        let app = app_id(&request.get_ref().app_id)?;
        if !self.shared.apps.heartbeat(&app) {
            return Err(self.fail(ServiceError::UnknownApp { app }));
        }
        Ok(Response::new(self.expiry_reply()))
    }

    async fn register_shuffle(
        &self,
        request: Request<RegisterShuffleRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        let app = app_id(&r.app_id)?;
        let mode = u8::try_from(r.mode)
            .map_err(|_| ())
            .and_then(|m| ShuffleMode::from_code(m).map_err(|_| ()))
            .map_err(|_| invalid(format!("unknown shuffle mode {}", r.mode)))?;
        let spec = ShuffleSpec::new(r.num_maps, r.num_partitions, mode).map_err(invalid)?;
        let replication = Replication::new(r.replication.max(1)).map_err(invalid)?;
        let role = if replication.copies() > 1 {
            Some(
                CopyRole::new(r.placement_servers, r.placement_index, r.placement_offset)
                    .map_err(|reason| invalid(format!("replicated shuffle: {reason}")))?,
            )
        } else {
            None
        };
        self.shared.refuse_if_draining().map_err(|e| self.fail(e))?;
        self.shared.apps.touch(&app).map_err(|e| self.fail(e))?;
        let shuffle = ShuffleId(r.shuffle_id);
        self.blocking(move |s| s.register_shuffle_as(&app, shuffle, spec, role))
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn unregister_shuffle(&self, request: Request<ShuffleRef>) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        let app = app_id(&r.app_id)?;
        let shuffle = ShuffleId(r.shuffle_id);
        self.blocking(move |s| s.unregister_shuffle(&app, shuffle))
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn commit_map(
        &self,
        request: Request<CommitMapRequest>,
    ) -> Result<Response<CommitMapReply>, Status> {
        let _in_flight = self.shared.commits.enter();
        let r = request.into_inner();
        let app = app_id(&r.app_id)?;
        let manifest = CommitManifest::from_sparse(
            r.blocks
                .iter()
                .map(|b| (PartitionId(b.partition), b.blocks))
                .collect(),
        )
        .map_err(invalid)?;
        let (shuffle, map, attempt) = (ShuffleId(r.shuffle_id), MapId(r.map_id), AttemptId(r.attempt_id));
        self.shared.apps.heartbeat(&app);
        let outcome = self
            .blocking(move |s| s.commit(&app, shuffle, map, attempt, manifest))
            .await?;
        Ok(Response::new(CommitMapReply {
            sealed: outcome.sealed,
            already_committed: outcome.already_committed,
        }))
    }

    async fn shuffle_status(
        &self,
        request: Request<ShuffleRef>,
    ) -> Result<Response<ShuffleStatusReply>, Status> {
        let r = request.into_inner();
        let app = app_id(&r.app_id)?;
        let status = self
            .shared
            .store
            .status(&app, ShuffleId(r.shuffle_id))
            .map_err(|e| self.fail(e.to_service_error()))?;
        Ok(Response::new(ShuffleStatusReply {
            num_maps: status.spec.num_maps(),
            num_partitions: status.spec.num_partitions(),
            mode: u32::from(status.spec.mode().code()),
            committed_maps: status.committed_maps,
            sealed: status.sealed,
            stored_bytes: status.stored_bytes,
        }))
    }

    async fn committed_sizes(
        &self,
        request: Request<CommittedSizesRequest>,
    ) -> Result<Response<CommittedSizesReply>, Status> {
        let r = request.into_inner();
        let app = app_id(&r.app_id)?;
        let (shuffle, map) = (ShuffleId(r.shuffle_id), r.one_map.then_some(MapId(r.map_id)));
        // Walks the index under the shuffle's locks: off the async threads.
        let sizes = self
            .blocking(move |s| s.committed_sizes(&app, shuffle, map))
            .await?;
        Ok(Response::new(CommittedSizesReply {
            committed: sizes.attempt.is_some(),
            attempt: sizes.attempt.map_or(0, |a| a.0),
            partitions: sizes
                .partitions
                .into_iter()
                .map(|(p, bytes)| PartitionBytes {
                    partition: p.0,
                    bytes,
                })
                .collect(),
        }))
    }

    async fn server_status(&self, _request: Request<Empty>) -> Result<Response<ServerStatusReply>, Status> {
        let shared = &self.shared;
        // From memory: the store probes its disks on its own thread.
        let disks = shared
            .store
            .disk_status()
            .into_iter()
            .map(|d| DiskStatus {
                path: d.path.display().to_string(),
                stored_bytes: d.stored_bytes,
                free_bytes: d.free_bytes.unwrap_or(0),
                writable: d.writable,
                healthy: d.healthy,
                accepting: d.accepting,
                reason: d.reason.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(ServerStatusReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            draining: shared.is_draining(),
            active_apps: u32::try_from(shared.apps.len()).unwrap_or(u32::MAX),
            active_shuffles: u32::try_from(shared.store.shuffle_count()).unwrap_or(u32::MAX),
            buffer_bytes: shared.budget.in_use(),
            buffer_limit_bytes: shared.budget.limit(),
            disks,
        }))
    }
}
