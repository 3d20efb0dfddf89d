//! QMP input: arbitrary bytes through the splitter, the request parser and a
//! session serving the migration commands give the same messages and the same
//! responses however the bytes are split, never panic, and never hold more
//! than the message limits allow.
//!
//! Input layout: byte 0 holds the number of chunk sizes in its low 4 bits
//! (0 means one byte at a time); then come the chunk sizes, one byte each (0
//! feeds an empty slice), used in turn; the rest is the stream.

#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vmstream_fuzz::peak_alloc;
use vmstream_migrate::qmp::{
    MigrateArgs, MigrateIncomingArgs, MigrationCapability, MigrationCapabilityStatus,
    MigrationCommands, MigrationControl, MigrationInfo, MigrationParameters, QmpError, QmpLimits,
    Request, Session, SetMigrationParameters, Splitter,
};

/// Small limits, so that inputs reach them.
fn limits() -> QmpLimits {
    QmpLimits::default()
        .with_max_message(4096)
        .with_max_tokens(256)
        .with_max_depth(16)
}

/// Most heap one step of the splitter may add: a message's text and tokens,
/// and the value parsed from it.
const MAX_STEP_HEAP: usize = 256 << 10;

/// Migration state kept in memory, so that commands that pass their argument
/// checks change something the next commands see.
#[derive(Default)]
struct Control {
    params: Mutex<MigrationParameters>,
    caps: Mutex<Vec<MigrationCapabilityStatus>>,
    info: Mutex<MigrationInfo>,
}

impl MigrationControl for Control {
    fn migrate(&self, args: MigrateArgs) -> Result<(), QmpError> {
        assert_eq!(MigrateArgs::from_args(args.to_args()).as_ref(), Ok(&args));
        self.info.lock().unwrap().error_desc = Some(format!("{:?}", args.target));
        Ok(())
    }

    fn migrate_incoming(&self, args: MigrateIncomingArgs) -> Result<(), QmpError> {
        assert_eq!(
            MigrateIncomingArgs::from_args(args.to_args()).as_ref(),
            Ok(&args)
        );
        Err(QmpError::generic("not listening"))
    }

    fn query_migrate(&self) -> Result<MigrationInfo, QmpError> {
        Ok(self.info.lock().unwrap().clone())
    }

    fn query_migrate_capabilities(&self) -> Result<Vec<MigrationCapabilityStatus>, QmpError> {
        Ok(self.caps.lock().unwrap().clone())
    }

    fn migrate_set_capabilities(
        &self,
        caps: Vec<MigrationCapabilityStatus>,
    ) -> Result<(), QmpError> {
        let mut current = self.caps.lock().unwrap();
        for cap in caps {
            if cap.capability == MigrationCapability::Xbzrle {
                return Err(QmpError::generic("xbzrle is not supported"));
            }
            current.retain(|c| c.capability != cap.capability);
            current.push(cap);
        }
        Ok(())
    }

    fn query_migrate_parameters(&self) -> Result<MigrationParameters, QmpError> {
        Ok(self.params.lock().unwrap().clone())
    }

    fn migrate_set_parameters(&self, set: SetMigrationParameters) -> Result<(), QmpError> {
        assert_eq!(
            SetMigrationParameters::from_args(set.to_args()).as_ref(),
            Ok(&set)
        );
        let mut params = self.params.lock().unwrap();
        let next = params.apply(&set)?;
        next.check()
            .expect("apply returned parameters that do not check");
        *params = next;
        Ok(())
    }

    fn migrate_cancel(&self) -> Result<(), QmpError> {
        Ok(())
    }
}

/// What one run produced: each message (value or error and its offset), and
/// each response.
#[derive(Debug, PartialEq)]
struct Run {
    messages: Vec<Result<Value, (String, u64)>>,
    responses: Vec<Value>,
}

fn run(stream: &[u8], sizes: &[usize]) -> Run {
    let mut splitter = Splitter::new(limits());
    let mut session = Session::new(Arc::new(MigrationCommands::new(Control::default())));
    let mut out = Run {
        messages: Vec::new(),
        responses: Vec::new(),
    };
    let mut rest = stream;
    let mut size = sizes.iter().cycle();
    while !rest.is_empty() {
        let n = size.next().copied().unwrap_or(1).min(rest.len());
        let (mut chunk, tail) = rest.split_at(n);
        rest = tail;
        loop {
            let before = splitter.offset();
            let ((used, msg), heap) = peak_alloc(|| splitter.feed(chunk));
            assert!(heap <= MAX_STEP_HEAP, "one step held {heap} bytes");
            assert_eq!(splitter.offset() - before, used as u64);
            assert!(used > 0 || msg.is_some() || chunk.is_empty(), "no progress");
            chunk = &chunk[used..];
            let Some(msg) = msg else { break };
            if let Ok(v) = &msg {
                let _ = Request::parse(v.clone());
            }
            out.messages
                .push(msg.clone().map_err(|e| (e.desc().to_string(), e.offset())));
            let response = session.handle(msg);
            let obj = response.as_object().expect("a response is an object");
            assert!(
                obj.contains_key("return") != obj.contains_key("error"),
                "{response}"
            );
            out.responses.push(response);
            if chunk.is_empty() {
                break;
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(ctl & 0x0f);
    let (spec, stream) = rest.split_at(n.min(rest.len()));
    let mut sizes: Vec<usize> = spec.iter().map(|&b| usize::from(b)).collect();
    if sizes.iter().all(|&s| s == 0) {
        sizes.push(1);
    }
    let whole = run(stream, &[usize::MAX]);
    let split = run(stream, &sizes);
    assert_eq!(whole, split, "chunk sizes {sizes:?}");
});
