//! Nothing a snippet does is visible to the next one: monkeypatches of modules and
//! builtins stay in their run (embedded mode gives each run fresh globals,
//! builtins and module proxies on a warm interpreter).

use terrarium::Status;

use crate::common::run;

#[test]
fn monkeypatches_do_not_leak_into_the_next_run() {
    for (patch, check, expected) in [
        ("import math\nmath.pi = 3", "import math\nmath.pi", serde_json::json!(std::f64::consts::PI)),
        ("import json\njson.dumps = lambda *a: 'evil'", "import json\njson.dumps([1])", serde_json::json!("[1]")),
        ("__builtins__['len'] = lambda x: 42", "len([1, 2])", serde_json::json!(2)),
        ("x_leak = 'secret'", "'x_leak' in globals()", serde_json::json!(false)),
    ] {
        // Several times: the pool has more than one interpreter.
        for _ in 0..4 {
            let p = run(patch);
            assert_eq!(p.status, Status::Ok, "{patch:?}: {p:?}");
        }
        for _ in 0..4 {
            let o = run(check);
            assert_eq!(o.result, Some(expected.clone()), "{patch:?} leaked into {check:?}: {o:?}");
        }
    }
}
