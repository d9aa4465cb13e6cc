//! The sequencer against scripted stages: every event each stage sees, in order.

use super::*;
use std::cell::RefCell;
use std::rc::Rc;

type Log = Rc<RefCell<Vec<String>>>;

/// How a scripted stage answers.
#[derive(Clone, Copy, Default)]
struct Script {
    /// Request head: wait for this call's answer.
    head_waits_on: Option<u32>,
    /// Request head: refuse.
    head_answers: bool,
    /// Request body: hold until its end.
    buffers_request: bool,
    /// Request body: at its end, wait for this call.
    body_waits_on: Option<u32>,
    /// Response body: hold until its end, then wait for this call.
    response_waits_on: Option<u32>,
    /// Response: hold the body until its end.
    buffers_response: bool,
    /// The call's answer: `Some(Pause)` still waits, `Some(Answered)` replies.
    call_flow: Option<Flow>,
}

struct Scripted {
    name: &'static str,
    script: Script,
    log: Log,
    waiting: Option<u32>,
}

impl Scripted {
    fn note(&self, event: String) {
        self.log.borrow_mut().push(format!("{}:{event}", self.name));
    }
}

impl Stage for Scripted {
    fn request_headers(&mut self, _: &mut RequestState, end_of_stream: bool) -> Flow {
        self.note(format!("req-head({end_of_stream})"));
        if self.script.head_answers {
            return Flow::Answered;
        }
        if let Some(token) = self.script.head_waits_on {
            self.waiting = Some(token);
            return Flow::Pause;
        }
        if self.script.buffers_request && !end_of_stream {
            return Flow::Pause;
        }
        Flow::Continue
    }

    fn request_body(
        &mut self,
        _: &mut RequestState,
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        self.note(format!("req-body({body_size},{end_of_stream})"));
        if self.waiting.is_some() || (self.script.buffers_request && !end_of_stream) {
            return Flow::Pause;
        }
        if let (Some(token), true) = (self.script.body_waits_on, end_of_stream) {
            self.waiting = Some(token);
            return Flow::Pause;
        }
        Flow::Continue
    }

    fn response_headers(&mut self, _: &mut RequestState, end_of_stream: bool) -> Flow {
        self.note(format!("resp-head({end_of_stream})"));
        if (self.script.buffers_response || self.script.response_waits_on.is_some())
            && !end_of_stream
        {
            return Flow::Pause;
        }
        Flow::Continue
    }

    fn response_body(
        &mut self,
        _: &mut RequestState,
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        self.note(format!("resp-body({body_size},{end_of_stream})"));
        if self.script.buffers_response || self.script.response_waits_on.is_some() {
            if !end_of_stream {
                return Flow::Pause;
            }
            if let Some(token) = self.script.response_waits_on {
                self.waiting = Some(token);
                return Flow::Pause;
            }
        }
        Flow::Continue
    }

    fn call_response(
        &mut self,
        _: &mut RequestState,
        token: u32,
        _body_size: usize,
    ) -> Option<Flow> {
        if self.waiting != Some(token) {
            return None;
        }
        self.note(format!("call({token})"));
        let flow = self.script.call_flow.unwrap_or(Flow::Continue);
        if flow != Flow::Pause {
            self.waiting = None;
        }
        Some(flow)
    }

    fn log(&mut self, _: &mut RequestState) {
        self.note("log".into());
    }
}

const NAMES: [&str; 5] = ["routing", "authz", "ratelimit", "consent", "audit"];

/// Five stages, scripted by name (the rest let everything go).
fn pipeline(scripts: &[(&str, Script)]) -> (Vec<Box<dyn Stage>>, Sequencer, Log) {
    let log: Log = Rc::default();
    let stages: Vec<Box<dyn Stage>> = NAMES
        .iter()
        .map(|name| {
            let script = scripts
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| *s)
                .unwrap_or_default();
            Box::new(Scripted {
                name,
                script,
                log: log.clone(),
                waiting: None,
            }) as Box<dyn Stage>
        })
        .collect();
    let sequencer = Sequencer::new(stages.len());
    (stages, sequencer, log)
}

fn taken(log: &Log) -> Vec<String> {
    std::mem::take(&mut *log.borrow_mut())
}

fn every(event: &str, order: &[&str]) -> Vec<String> {
    order.iter().map(|n| format!("{n}:{event}")).collect()
}

const REVERSED: [&str; 5] = ["audit", "consent", "ratelimit", "authz", "routing"];

mod passing_everything {
    use super::*;

    #[test]
    fn a_bodiless_request_passes_every_stage_in_order_and_its_response_in_reverse() {
        let (mut stages, mut seq, log) = pipeline(&[]);
        assert_eq!(seq.request_headers(&mut stages, true), Flow::Continue);
        assert_eq!(taken(&log), every("req-head(true)", &NAMES));
        assert_eq!(seq.response_headers(&mut stages, false), Flow::Continue);
        assert_eq!(seq.response_body(&mut stages, 10, true), Flow::Continue);
        let mut expected = every("resp-head(false)", &REVERSED);
        expected.extend(every("resp-body(10,true)", &REVERSED));
        assert_eq!(taken(&log), expected);
    }

    #[test]
    fn streamed_chunks_reach_every_stage_even_when_two_have_the_same_size() {
        let (mut stages, mut seq, log) = pipeline(&[]);
        assert_eq!(seq.request_headers(&mut stages, false), Flow::Continue);
        taken(&log);
        for end in [false, false, true] {
            assert_eq!(seq.request_body(&mut stages, 4, end), Flow::Continue);
            assert_eq!(taken(&log), every(&format!("req-body(4,{end})"), &NAMES));
        }
    }

    #[test]
    fn the_log_callback_reaches_every_stage() {
        let (mut stages, mut seq, log) = pipeline(&[]);
        seq.log(&mut stages);
        assert_eq!(taken(&log), every("log", &NAMES));
    }
}

mod holding_a_request_for_its_body {
    use super::*;

    fn buffering_routing() -> Vec<(&'static str, Script)> {
        vec![(
            "routing",
            Script {
                buffers_request: true,
                ..Default::default()
            },
        )]
    }

    #[test]
    fn later_stages_see_nothing_until_the_body_is_whole_then_see_head_and_whole_body() {
        let (mut stages, mut seq, log) = pipeline(&buffering_routing());
        assert_eq!(seq.request_headers(&mut stages, false), Flow::Pause);
        assert_eq!(seq.request_body(&mut stages, 5, false), Flow::Pause);
        assert_eq!(
            taken(&log),
            vec!["routing:req-head(false)", "routing:req-body(5,false)"]
        );
        assert_eq!(seq.request_body(&mut stages, 9, true), Flow::Continue);
        let mut expected = vec!["routing:req-body(9,true)".to_string()];
        for name in &NAMES[1..] {
            expected.push(format!("{name}:req-head(false)"));
            expected.push(format!("{name}:req-body(9,true)"));
        }
        assert_eq!(taken(&log), expected);
    }

    #[test]
    fn trailers_end_the_body_a_stage_holds_so_it_decides_on_what_arrived() {
        let (mut stages, mut seq, log) = pipeline(&buffering_routing());
        seq.request_headers(&mut stages, false);
        assert_eq!(seq.request_body(&mut stages, 7, false), Flow::Pause);
        taken(&log);
        assert_eq!(seq.request_trailers(&mut stages), Flow::Continue);
        assert_eq!(taken(&log)[0], "routing:req-body(7,true)");
    }

    #[test]
    fn a_response_whose_body_ends_with_trailers_is_still_decided_by_the_stage_holding_it() {
        let scripts = [(
            "consent",
            Script {
                buffers_response: true,
                ..Default::default()
            },
        )];
        let (mut stages, mut seq, log) = pipeline(&scripts);
        seq.request_headers(&mut stages, true);
        seq.response_headers(&mut stages, false);
        assert_eq!(seq.response_body(&mut stages, 30, false), Flow::Pause);
        taken(&log);
        assert_eq!(seq.response_trailers(&mut stages), Flow::Continue);
        let log = taken(&log);
        assert_eq!(log[0], "audit:resp-body(30,true)");
        assert_eq!(log[1], "consent:resp-body(30,true)");
        assert!(log.contains(&"routing:resp-body(30,true)".to_string()));
    }
}

mod waiting_for_a_call {
    use super::*;

    fn authz_waits() -> Vec<(&'static str, Script)> {
        vec![(
            "authz",
            Script {
                head_waits_on: Some(7),
                ..Default::default()
            },
        )]
    }

    #[test]
    fn stages_after_a_waiting_one_run_only_when_its_call_answers() {
        let (mut stages, mut seq, log) = pipeline(&authz_waits());
        assert_eq!(seq.request_headers(&mut stages, true), Flow::Pause);
        assert_eq!(
            taken(&log),
            vec!["routing:req-head(true)", "authz:req-head(true)"]
        );
        assert_eq!(seq.call_response(&mut stages, 7, 0), Resume::Request);
        let mut expected = vec!["authz:call(7)".to_string()];
        expected.extend(every("req-head(true)", &NAMES[2..]));
        assert_eq!(taken(&log), expected);
    }

    #[test]
    fn a_body_that_arrives_meanwhile_reaches_the_waiting_stage_and_then_the_rest() {
        let (mut stages, mut seq, log) = pipeline(&authz_waits());
        seq.request_headers(&mut stages, false);
        assert_eq!(seq.request_body(&mut stages, 12, true), Flow::Pause);
        assert_eq!(
            taken(&log),
            vec![
                "routing:req-head(false)",
                "authz:req-head(false)",
                "routing:req-body(12,true)",
                "authz:req-body(12,true)"
            ]
        );
        assert_eq!(seq.call_response(&mut stages, 7, 0), Resume::Request);
        let mut expected = vec!["authz:call(7)".to_string()];
        for name in &NAMES[2..] {
            expected.push(format!("{name}:req-head(false)"));
            expected.push(format!("{name}:req-body(12,true)"));
        }
        assert_eq!(taken(&log), expected);
    }

    #[test]
    fn an_unknown_call_resumes_nothing() {
        let (mut stages, mut seq, log) = pipeline(&authz_waits());
        seq.request_headers(&mut stages, true);
        taken(&log);
        assert_eq!(seq.call_response(&mut stages, 99, 0), Resume::Nothing);
        assert!(taken(&log).is_empty());
    }

    #[test]
    fn a_call_that_leaves_the_stage_waiting_resumes_nothing() {
        let mut scripts = authz_waits();
        scripts[0].1.call_flow = Some(Flow::Pause);
        let (mut stages, mut seq, log) = pipeline(&scripts);
        seq.request_headers(&mut stages, true);
        taken(&log);
        assert_eq!(seq.call_response(&mut stages, 7, 0), Resume::Nothing);
        assert_eq!(taken(&log), vec!["authz:call(7)"]);
    }

    #[test]
    fn a_stage_that_replies_from_its_call_ends_the_request() {
        let mut scripts = authz_waits();
        scripts[0].1.call_flow = Some(Flow::Answered);
        let (mut stages, mut seq, log) = pipeline(&scripts);
        seq.request_headers(&mut stages, false);
        assert_eq!(seq.call_response(&mut stages, 7, 0), Resume::Nothing);
        taken(&log);
        assert_eq!(seq.request_body(&mut stages, 3, true), Flow::Pause);
        assert!(taken(&log).is_empty(), "nothing runs after a reply");
    }

    #[test]
    fn a_stage_whose_call_answers_still_sees_the_body_an_earlier_stage_was_holding() {
        let scripts = [
            (
                "routing",
                Script {
                    body_waits_on: Some(5),
                    ..Default::default()
                },
            ),
            (
                "authz",
                Script {
                    head_waits_on: Some(7),
                    ..Default::default()
                },
            ),
        ];
        let (mut stages, mut seq, log) = pipeline(&scripts);
        assert_eq!(seq.request_headers(&mut stages, false), Flow::Pause);
        assert_eq!(seq.request_body(&mut stages, 8, true), Flow::Pause);
        assert_eq!(seq.call_response(&mut stages, 7, 0), Resume::Nothing);
        taken(&log);
        assert_eq!(seq.call_response(&mut stages, 5, 0), Resume::Request);
        let log = taken(&log);
        assert!(
            log.contains(&"authz:req-body(8,true)".to_string()),
            "the body reaches the stage that was waiting on its own call: {log:?}"
        );
    }

    #[test]
    fn a_reply_from_envoy_while_a_stage_waits_ends_the_request() {
        let (mut stages, mut seq, log) = pipeline(&authz_waits());
        seq.request_headers(&mut stages, true);
        // Envoy answers the client itself (a timeout) while authz waits.
        seq.response_headers(&mut stages, true);
        taken(&log);
        assert_eq!(seq.call_response(&mut stages, 7, 0), Resume::Nothing);
        assert!(
            !taken(&log).iter().any(|e| e.contains("req-head")),
            "no later stage runs for a request that is over"
        );
    }

    #[test]
    fn a_held_response_goes_on_through_the_earlier_stages_when_the_call_answers() {
        let scripts = [(
            "consent",
            Script {
                response_waits_on: Some(3),
                ..Default::default()
            },
        )];
        let (mut stages, mut seq, log) = pipeline(&scripts);
        seq.request_headers(&mut stages, true);
        assert_eq!(seq.response_headers(&mut stages, false), Flow::Pause);
        assert_eq!(seq.response_body(&mut stages, 40, true), Flow::Pause);
        assert_eq!(
            taken(&log)[5..],
            [
                "audit:resp-head(false)",
                "consent:resp-head(false)",
                "audit:resp-body(40,true)",
                "consent:resp-body(40,true)"
            ]
        );
        assert_eq!(seq.call_response(&mut stages, 3, 0), Resume::Response);
        let mut expected = vec!["consent:call(3)".to_string()];
        for name in ["ratelimit", "authz", "routing"] {
            expected.push(format!("{name}:resp-head(false)"));
            expected.push(format!("{name}:resp-body(40,true)"));
        }
        assert_eq!(taken(&log), expected);
    }
}

mod refusing {
    use super::*;

    #[test]
    fn a_refusal_stops_the_request_and_its_reply_passes_every_stage_back() {
        let scripts = [(
            "authz",
            Script {
                head_answers: true,
                ..Default::default()
            },
        )];
        let (mut stages, mut seq, log) = pipeline(&scripts);
        assert_eq!(seq.request_headers(&mut stages, false), Flow::Answered);
        assert_eq!(
            taken(&log),
            vec!["routing:req-head(false)", "authz:req-head(false)"]
        );
        assert_eq!(seq.request_body(&mut stages, 5, true), Flow::Pause);
        assert!(taken(&log).is_empty());
        assert_eq!(seq.response_headers(&mut stages, true), Flow::Continue);
        assert_eq!(taken(&log), every("resp-head(true)", &REVERSED));
    }
}

mod module_configuration {
    use super::super::module_sections;

    #[test]
    fn sections_come_in_pipeline_order_whatever_the_order_written() {
        let sections =
            module_sections(br#"{"audit": {"log": true}, "routing": {}, "authz": {"x": 1}}"#)
                .unwrap();
        let names: Vec<&str> = sections.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["routing", "authz", "audit"]);
        assert_eq!(sections[1].1, br#"{"x":1,"routing":{}}"#);
    }

    #[test]
    fn the_authz_section_parses_requests_with_the_routing_section_unless_it_has_its_own() {
        let sections =
            module_sections(br#"{"routing": {"basePath": "/r4"}, "authz": {"mode": "enforce"}}"#)
                .unwrap();
        assert_eq!(
            sections[1].1,
            br#"{"mode":"enforce","routing":{"basePath":"/r4"}}"#
        );
        let same = module_sections(
            br#"{"routing": {"basePath": "/r4"}, "authz": {"routing": {"basePath": "/r4"}}}"#,
        )
        .unwrap();
        assert_eq!(same[1].1, br#"{"routing":{"basePath":"/r4"}}"#);
        // A different one would make the authz stage disagree with the parse it decides on.
        let err = module_sections(
            br#"{"routing": {"basePath": "/r4"}, "authz": {"routing": {"basePath": "/x"}}}"#,
        )
        .unwrap_err();
        assert_eq!(err.field, "authz.routing", "{err}");
        let alone = module_sections(br#"{"authz": {}}"#).unwrap();
        assert_eq!(alone[0].1, b"{}");
    }

    #[test]
    fn an_unknown_stage_is_refused_by_name() {
        let err = module_sections(br#"{"routing": {}, "consnet": {}}"#).unwrap_err();
        assert!(err.to_string().contains("consnet"), "{err}");
    }

    #[test]
    fn a_configuration_naming_no_stage_is_refused() {
        for empty in [&b""[..], b"{}", b"  "] {
            let err = module_sections(empty).unwrap_err();
            assert!(err.to_string().contains("names no stage"), "{err}");
        }
    }

    #[test]
    fn a_section_that_is_not_an_object_reaches_its_stage_to_refuse() {
        let sections = module_sections(br#"{"ratelimit": 5}"#).unwrap();
        assert_eq!(sections[0], ("ratelimit", b"5".to_vec()));
    }
}

mod checking_a_module_configuration {
    use super::super::check_module;

    #[test]
    fn a_refused_section_names_its_field_from_the_root() {
        let err = check_module(br#"{"routing": {}, "ratelimit": {"enforcement": "sometimes"}}"#)
            .unwrap_err();
        assert_eq!(err.field, "ratelimit.enforcement", "{err}");
    }

    #[test]
    fn an_unknown_field_inside_a_section_is_named_under_it() {
        let err = check_module(br#"{"routing": {"basePath": "/fhir", "bogus": 1}}"#).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        assert!(err.field.starts_with("routing"), "{err}");
    }

    #[test]
    fn the_shipped_sections_together_make_a_valid_module() {
        let section = |name: &str| -> serde_json::Value {
            let path = format!("{}/../../envoy/{name}.json", env!("CARGO_MANIFEST_DIR"));
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
        };
        let module =
            serde_json::json!({"routing": section("routing"), "ratelimit": section("ratelimit")});
        let stages = check_module(module.to_string().as_bytes()).unwrap();
        assert_eq!(stages, ["routing", "ratelimit"]);
    }
}
