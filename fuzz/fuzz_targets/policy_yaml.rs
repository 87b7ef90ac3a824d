//! Policy parsing never panics, and every policy it accepts survives a round trip
//! through its effective form unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use terrarium::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(policy) = Policy::from_yaml(text, "<fuzz>") {
        let effective = policy.to_yaml();
        let again = Policy::from_yaml(&effective, "<effective>").expect("the effective policy parses");
        assert_eq!(policy, again, "round trip changed the policy:\n{effective}");
    }
});
