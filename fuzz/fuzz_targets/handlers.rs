//! The gRPC handlers fed sequences of decoded requests (and arbitrary bytes); see
//! `realize_fuzz` for the fixture and what each input asserts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: realize_fuzz::Input| realize_fuzz::run(&input));
