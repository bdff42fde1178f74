//! `POST /api/v1/roi`: "Should I join?" answers with the simulator's own calculation (the same
//! numbers as `simulate roi`), refuses bad input by its field, and bounds the request.

use axum::http::StatusCode;
use gridshare_simulations::roi::{self, RoiInput};
use serde_json::{Value, json};

use crate::Fixture;
use crate::api::call;

/// The same document, numbers equal to the last bits floating point may differ in between two
/// builds of one function (the engine's and the test's inlining of the library differ).
fn same_numbers(a: &Value, b: &Value, at: &str) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
                "{at}: {x} against {y}"
            );
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}");
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                same_numbers(x, y, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(
                x.keys().collect::<Vec<_>>(),
                y.keys().collect::<Vec<_>>(),
                "{at}"
            );
            for (k, v) in x {
                same_numbers(v, &y[k], &format!("{at}.{k}"));
            }
        }
        (x, y) => assert_eq!(x, y, "{at}"),
    }
}

#[tokio::test]
async fn the_answer_is_the_simulators_and_bad_input_is_refused_by_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("engine.sqlite").display());
    let app = Fixture::open(&url).await.app;

    // A newcomer's three numbers, anonymously.
    let body = json!({"annual_kwh": 3500, "pv_kwp": 6, "battery_kwh": 5, "token": {"paths": 2000}});
    let (status, answer, _) = call(&app, "POST", "/api/v1/roi", None, Some(body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let expected = roi::evaluate(
        &RoiInput::from_json(body.to_string().as_bytes()).unwrap(),
        None,
    )
    .unwrap();
    // The CLI's numbers.
    same_numbers(&answer, &serde_json::to_value(&expected).unwrap(), "");
    assert_eq!(answer["fan"]["years"].as_array().unwrap().len(), 26);

    // Moving the volatility reuses the simulated year and changes the spread.
    let mut wilder = body.clone();
    wilder["token"]["volatility"] = json!(1.5);
    let (status, second, _) = call(&app, "POST", "/api/v1/roi", None, Some(wilder)).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["energy"], answer["energy"]);
    assert!(second["npv"]["p10"].as_f64().unwrap() < answer["npv"]["p10"].as_f64().unwrap());

    for (bad, field) in [
        (json!({"costs": {"meter_box": -1}}), "costs.meter_box"),
        (
            json!({"finance": {"lifetime_years": 0}}),
            "finance.lifetime_years",
        ),
        (json!({"token": {"volatility": 5}}), "token.volatility"),
        (json!({"pv_kwp": 50}), "pv_kwp"),
        (
            json!({"annual_kwh": 60000, "household": {"connection_kw": 8}, "pv_kwp": 4}),
            "household.connection_kw",
        ),
        (json!({"token": {"paths": 50000}}), "token.paths"),
        (json!({"token": {"volatilty": 0.5}}), "token.volatilty"),
        (
            json!({"community": {"scenario": "/etc/passwd"}}),
            "community.scenario",
        ),
        (
            json!({"community": {"neighbourhood": "atlantis"}}),
            "community.neighbourhood",
        ),
    ] {
        let (status, e, _) = call(&app, "POST", "/api/v1/roi", None, Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {e}");
        assert_eq!(e["field"], Value::from(field), "{bad}: {e}");
        assert!(!e.to_string().contains("NaN"), "{e}");
    }
}
