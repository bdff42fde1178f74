//! `POST /api/v1/roi` (public): "Should I join?" for the web app's page of that name. The body is
//! the household's inputs (`simulate roi`'s file as JSON, every field defaulted), the answer
//! `gridshare_simulations::roi::RoiResult` — the same library as the CLI, so the page and the
//! terminal show the same numbers.
//!
//! Design: the shipped neighbourhoods are parsed once, at the engine's start
//! (`Neighbourhood::parse_shipped`), never per request. Simulating the household's year
//! (three runs of the neighbourhood) happens once per neighbourhood and energy inputs and is
//! cached; a request that only moves the token price, its volatility, a cost or the discount
//! rate reprojects the cached year (tens of milliseconds for 10 000 paths). Both run on the blocking pool, at most
//! [`CONCURRENT`] at a time; further requests are answered 503 with `Retry-After`. Requests are
//! bounded: the body by the API's limit, the paths by [`MAX_PATHS`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use gridshare_simulations::roi::{
    self, EmissionSchedule, EnergyYear, Neighbourhood, RoiError, RoiInput, RoiResult,
};
use tokio::sync::Semaphore;

use super::extract::JsonBody;
use super::{ApiError, AppState};

/// Most price paths one request may draw.
const MAX_PATHS: u32 = 20_000;
/// Energy years kept (distinct households); the oldest is dropped beyond.
const CACHE_ENTRIES: usize = 64;
/// Calculations running at once.
const CONCURRENT: usize = 2;

/// The calculator's shared state: the cache of simulated years and the permits.
struct Calculator {
    years: Mutex<Cache>,
    permits: Arc<Semaphore>,
    emission: EmissionSchedule,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<String, (u64, Arc<EnergyYear>)>,
    clock: u64,
}

impl Cache {
    fn get(&mut self, key: &str) -> Option<Arc<EnergyYear>> {
        self.clock += 1;
        let now = self.clock;
        self.entries.get_mut(key).map(|(used, year)| {
            *used = now;
            Arc::clone(year)
        })
    }

    fn put(&mut self, key: String, year: Arc<EnergyYear>) {
        if self.entries.len() >= CACHE_ENTRIES
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(k, _)| k.clone())
        {
            self.entries.remove(&oldest);
        }
        self.clock += 1;
        self.entries.insert(key, (self.clock, year));
    }
}

/// The routes of this module (merged into [`super::router`]).
pub(super) fn routes() -> Router<AppState> {
    let calculator = Arc::new(Calculator {
        years: Mutex::new(Cache::default()),
        permits: Arc::new(Semaphore::new(CONCURRENT)),
        emission: EmissionSchedule::deployed(),
    });
    Router::new()
        .route("/api/v1/roi", post(calculate))
        .with_state(calculator)
}

fn refusal(e: &RoiError) -> ApiError {
    match (e, e.field()) {
        (RoiError::Simulation(_), _) | (_, None) => {
            tracing::error!(target: "api", "roi: {e}");
            ApiError::Internal(format!("the calculation failed: {e}"))
        }
        (_, Some(field)) => ApiError::Invalid {
            field: field.to_owned(),
            message: e.to_string(),
        },
    }
}

async fn calculate(
    State(calc): State<Arc<Calculator>>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Json<RoiResult>, ApiError> {
    let input = RoiInput::from_json_value(body).map_err(|e| refusal(&e))?;
    if input.token.paths > MAX_PATHS {
        return Err(ApiError::Invalid {
            field: "token.paths".into(),
            message: format!(
                "`token.paths` = {}: expected at most {MAX_PATHS} here (simulate roi draws more)",
                input.token.paths
            ),
        });
    }
    let Ok(permit) = Arc::clone(&calc.permits).try_acquire_owned() else {
        return Err(ApiError::Busy {
            message: "the calculator is busy; try again in a moment".into(),
            retry_after_s: 1,
        });
    };
    let result = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let key = input.energy_key();
        let cached = calc
            .years
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key);
        let year = match cached {
            Some(year) => year,
            None => {
                // Only shipped neighbourhoods (a request never names a file), parsed once.
                let n = Neighbourhood::shared_for_input(&input)?;
                let year = Arc::new(roi::energy::simulate(&n, &input)?);
                calc.years
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .put(key, Arc::clone(&year));
                year
            }
        };
        roi::project(&input, &year, &calc.emission)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("the calculation stopped: {e}")))?;
    result.map(Json).map_err(|e| refusal(&e))
}
