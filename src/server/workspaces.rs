//! The workspace endpoints (role admin): create, list, versions, diff, a file of
//! a version, rollback, verify. Runs use a workspace through `POST /v1/execute`'s
//! `workspace` field; these are the operator's view of the store.

use axum::Json;

use super::openapi::{BadRequest, Guarded, NotFound, TooLarge};
use super::*;

/// `POST /v1/workspaces`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    /// 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.
    name: String,
}

/// `POST /v1/workspaces/{name}/rollback`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RollbackBody {
    /// The version whose files the new version gets.
    version: u64,
}

/// `?from=A&to=B` of the diff endpoint.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct DiffQuery {
    /// The older version.
    from: u64,
    /// The newer version.
    to: u64,
}

/// Most bytes of unified diff one answer carries.
const DIFF_LIMIT: usize = 4 << 20;

fn answer<T: serde::Serialize>(state: &AppState, r: Result<T, SandboxError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => sandbox_error(state, &e),
    }
}

/// Runs `f` on workspace `name` off the async threads.
async fn with_workspace<T: Send + 'static>(
    state: &AppState,
    name: String,
    f: impl FnOnce(crate::workspace::Workspace) -> Result<T, crate::workspace::WorkspaceError> + Send + 'static,
) -> Result<T, SandboxError> {
    let all = state.sandbox().workspaces()?;
    tokio::task::spawn_blocking(move || all.get(&name).and_then(f))
        .await
        .map_err(|e| SandboxError::InvalidRequest(e.to_string()))?
        .map_err(SandboxError::from)
}

/// Create an empty workspace (version 0).
#[utoipa::path(post, path = "/v1/workspaces", tag = "workspaces", request_body = CreateBody,
    responses((status = 200, description = "Created: `{workspace, version}`.", body = Object),
        (status = 400, response = BadRequest), (status = 413, response = TooLarge), Guarded),
    security(("bearer" = ["admin"])))]
pub(super) async fn create(
    State(state): State<Shared>,
    Caller(caller, _): Caller<Administrator>,
    body: Body,
) -> Response {
    let b: CreateBody = match json_body(&state, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let made = state.sandbox().create_workspace(&b.name, &caller.name).await;
    answer(&state, made.map(|m| serde_json::json!({"workspace": b.name, "version": m.version})))
}

/// Every workspace with its current version.
#[utoipa::path(get, path = "/v1/workspaces", tag = "workspaces",
    responses((status = 200, description = "`[{name, version, files, bytes}]`.", body = Object), Guarded),
    security(("bearer" = ["admin"])))]
pub(super) async fn list(State(state): State<Shared>, _: Caller<Administrator>) -> Response {
    let listed = match state.sandbox().workspaces() {
        Ok(all) => tokio::task::spawn_blocking(move || all.list())
            .await
            .map_err(|e| SandboxError::InvalidRequest(e.to_string()))
            .and_then(|r| r.map_err(SandboxError::from)),
        Err(e) => Err(e),
    };
    answer(&state, listed)
}

/// A workspace's versions, oldest first, each with its manifest's sha256.
#[utoipa::path(get, path = "/v1/workspaces/{name}/versions", tag = "workspaces",
    params(("name" = String, Path, description = "The workspace.")),
    responses((status = 200, description = "`[{version, parent, created_unix, reason, files, bytes, manifest_sha256}]`.", body = Object),
        (status = 404, response = NotFound), Guarded),
    security(("bearer" = ["admin"])))]
pub(super) async fn versions(
    State(state): State<Shared>,
    _: Caller<Administrator>,
    Path(name): Path<String>,
) -> Response {
    let log = with_workspace(&state, name, |w| {
        Ok(w.log()?
            .into_iter()
            .map(|(m, sha)| {
                serde_json::json!({"version": m.version, "parent": m.parent, "created_unix": m.created_unix,
                    "reason": m.reason, "files": m.files(), "bytes": m.bytes(), "manifest_sha256": sha})
            })
            .collect::<Vec<_>>())
    })
    .await;
    answer(&state, log)
}

/// What changed from one version to another: each path, and a unified diff of the
/// text files (binary ones by size and hash).
#[utoipa::path(get, path = "/v1/workspaces/{name}/diff", tag = "workspaces",
    params(("name" = String, Path, description = "The workspace."), DiffQuery),
    responses((status = 200, description = "`{changes: [{path, action, old, new}], diff}`.", body = Object),
        (status = 400, response = BadRequest), (status = 404, response = NotFound), Guarded),
    security(("bearer" = ["admin"])))]
pub(super) async fn diff(
    State(state): State<Shared>,
    _: Caller<Administrator>,
    Path(name): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Response {
    let d = with_workspace(&state, name, move |w| {
        let changes = w.diff(q.from, q.to)?;
        let text = w.diff_text(&changes, DIFF_LIMIT);
        Ok(serde_json::json!({"changes": changes, "diff": text}))
    })
    .await;
    answer(&state, d)
}

/// One version's manifest: every path with its type, mode, size and sha256 (with
/// the file endpoint, the whole version: what `terrarium workspace export` writes).
#[utoipa::path(get, path = "/v1/workspaces/{name}/versions/{version}", tag = "workspaces",
    params(("name" = String, Path, description = "The workspace."), ("version" = u64, Path, description = "The version.")),
    responses((status = 200, description = "`{workspace, version, parent, created_unix, reason, entries, manifest_sha256}`.", body = Object),
        (status = 400, response = BadRequest), (status = 404, response = NotFound), Guarded),
    security(("bearer" = ["admin"])))]
pub(super) async fn manifest(
    State(state): State<Shared>,
    _: Caller<Administrator>,
    Path((name, version)): Path<(String, u64)>,
) -> Response {
    let m = with_workspace(&state, name, move |w| {
        let (m, sha) = w.version_with_digest(version)?;
        let mut v = serde_json::to_value(&m).unwrap_or_default();
        if let Some(map) = v.as_object_mut() {
            map.insert("manifest_sha256".into(), sha.into());
        }
        Ok(v)
    })
    .await;
    answer(&state, m)
}

/// One file of one version, as stored.
#[utoipa::path(get, path = "/v1/workspaces/{name}/versions/{version}/files/{path}", tag = "workspaces",
    params(("name" = String, Path, description = "The workspace."), ("version" = u64, Path, description = "The version."),
        ("path" = String, Path, description = "The file's path in the workspace.")),
    responses((status = 200, description = "The file's bytes.", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, response = BadRequest), (status = 404, response = NotFound), Guarded),
    security(("bearer" = ["admin"])))]
pub(super) async fn file(
    State(state): State<Shared>,
    _: Caller<Administrator>,
    Path((name, version, path)): Path<(String, u64, String)>,
) -> Response {
    match with_workspace(&state, name, move |w| w.show(version, &path)).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(e) => sandbox_error(&state, &e),
    }
}

/// Make a new version with an earlier version's files, and rewrite the live
/// files to match (history is kept; audited).
#[utoipa::path(post, path = "/v1/workspaces/{name}/rollback", tag = "workspaces", request_body = RollbackBody,
    params(("name" = String, Path, description = "The workspace.")),
    responses((status = 200, description = "`{workspace, version}`: the new version.", body = Object),
        (status = 400, response = BadRequest), (status = 404, response = NotFound), (status = 413, response = TooLarge), Guarded),
    security(("bearer" = ["admin"])))]
pub(super) async fn rollback(
    State(state): State<Shared>,
    Caller(caller, _): Caller<Administrator>,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    let b: RollbackBody = match json_body(&state, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let done = state.sandbox().rollback_workspace(&name, b.version, &caller.name).await;
    answer(&state, done.map(|m| serde_json::json!({"workspace": name, "version": m.version})))
}

/// Compare the live files with the current version: every path changed, added or
/// removed behind Terrarium's back (drift is audited).
#[utoipa::path(post, path = "/v1/workspaces/{name}/verify", tag = "workspaces",
    params(("name" = String, Path, description = "The workspace.")),
    responses((status = 200, description = "`{version, drift: [{path, action, old, new}]}`.", body = Object),
        (status = 404, response = NotFound), Guarded),
    security(("bearer" = ["admin"])))]
pub(super) async fn verify(
    State(state): State<Shared>,
    _: Caller<Administrator>,
    Path(name): Path<String>,
) -> Response {
    let checked = state.sandbox().verify_workspace(&name).await;
    answer(&state, checked.map(|(m, drift)| serde_json::json!({"version": m.version, "drift": drift})))
}
