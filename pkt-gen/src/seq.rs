//! `txseq` / `rxseq`: the integrity test of the switch.
//!
//! A txseq frame is an ordinary pkt-gen frame whose first four payload bytes
//! carry a 32-bit big-endian sequence number (netmap's format, UDP checksum
//! kept right). The rest of the payload is netmap's fixed text.
//!
//! The checker tells apart:
//! - **gaps**: sequence numbers skipped (frames dropped; counted, not errors);
//! - **errors**, each with its sequence number: a *corrupt* frame (bad
//!   header, length, checksum, payload byte, or an Ethernet header that
//!   differs from the first frame's), a *duplicate* (a number already
//!   seen), a *reordered* frame (a number from an earlier gap arriving late:
//!   it was counted lost and no longer is).

use std::fmt;

use crate::frame::{self, Af, Defect, Template, DIRECT_PAYLOAD, ETH_HLEN, INDIRECT_PAYLOAD};

/// Bytes of the sequence number at the start of the UDP payload.
pub const SEQ_LEN: usize = 4;

/// Sequence numbers remembered behind the newest one, to tell a duplicate
/// from a late frame.
pub const WINDOW: u32 = 1 << 16;

/// Most errors kept for the report (all are counted).
pub const MAX_KEPT: usize = 1000;

/// Writes `seq` into the template's payload, keeping the UDP checksum.
pub fn stamp(t: &mut Template, seq: u32) -> bool {
    t.write_payload(0, &seq.to_be_bytes())
}

/// What kind of error a frame showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A byte differs from what was sent.
    Corrupt,
    /// A sequence number seen twice.
    Duplicate,
    /// A sequence number behind the newest, not seen before.
    Reordered,
}

impl ErrorKind {
    /// Upper-case tag for log lines.
    pub fn tag(self) -> &'static str {
        match self {
            ErrorKind::Corrupt => "CORRUPT",
            ErrorKind::Duplicate => "DUPLICATE",
            ErrorKind::Reordered => "REORDERED",
        }
    }

    /// Lower-case name for JSON.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Duplicate => "duplicate",
            ErrorKind::Reordered => "reordered",
        }
    }
}

/// One error, with the sequence number it concerns (as read from the
/// frame; `None` when the frame is too damaged to hold one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// The sequence number.
    pub seq: Option<u32>,
    /// Details (which byte, which check).
    pub detail: String,
}

impl fmt::Display for SeqError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(s) => write!(f, "{} seq {}", self.kind.tag(), s)?,
            None => write!(f, "{} seq ?", self.kind.tag())?,
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// What one frame turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The expected sequence number, intact.
    InOrder(u32),
    /// Intact, after a gap: `missing` numbers from `expected` on were skipped.
    Gap {
        /// The number expected.
        expected: u32,
        /// The number found.
        found: u32,
        /// How many were skipped.
        missing: u32,
    },
    /// An error.
    Error(SeqError),
}

/// A gap: `count` numbers from `first` on were not received (when seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// First missing number.
    pub first: u32,
    /// How many.
    pub count: u32,
}

/// Totals of one or more checkers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqReport {
    /// Frames looked at.
    pub frames: u64,
    /// First sequence number received.
    pub first: Option<u32>,
    /// Newest sequence number received.
    pub last: Option<u32>,
    /// Gap events.
    pub gaps: u64,
    /// Numbers missing (gaps, less late arrivals).
    pub lost: u64,
    /// Corrupt frames.
    pub corrupt: u64,
    /// Duplicates.
    pub duplicates: u64,
    /// Late frames.
    pub reordered: u64,
    /// The first [`MAX_KEPT`] errors.
    pub errors: Vec<SeqError>,
    /// The first [`MAX_KEPT`] gaps.
    pub gap_list: Vec<Gap>,
}

impl SeqReport {
    /// Errors of all kinds.
    pub fn error_count(&self) -> u64 {
        self.corrupt + self.duplicates + self.reordered
    }

    /// Adds another checker's totals (another ring).
    pub fn merge(&mut self, o: &SeqReport) {
        self.frames += o.frames;
        self.first = match (self.first, o.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last = self.last.max(o.last);
        self.gaps += o.gaps;
        self.lost += o.lost;
        self.corrupt += o.corrupt;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        let room = MAX_KEPT.saturating_sub(self.errors.len());
        self.errors.extend(o.errors.iter().take(room).cloned());
        let room = MAX_KEPT.saturating_sub(self.gap_list.len());
        self.gap_list.extend(o.gap_list.iter().take(room).copied());
    }

    /// One line summary.
    pub fn summary(&self) -> String {
        let range = match (self.first, self.last) {
            (Some(a), Some(b)) => format!(", seq {a}..{b}"),
            _ => String::new(),
        };
        format!(
            "rxseq: {} frames{}: {} gaps ({} lost), {} errors ({} corrupt, {} duplicate, {} reordered)",
            self.frames,
            range,
            self.gaps,
            self.lost,
            self.error_count(),
            self.corrupt,
            self.duplicates,
            self.reordered
        )
    }
}

/// The checker of one flow (one RX ring).
#[derive(Debug, Clone)]
pub struct SeqChecker {
    /// Next number expected; `None` until the first frame.
    expected: Option<u32>,
    /// Numbers accounted for since the start (bounded use: window size).
    covered: u64,
    /// Bit `s % WINDOW` set when `s` was received, for the last WINDOW numbers.
    seen: Vec<u64>,
    /// Ethernet header of the first good frame.
    eth: Option<[u8; ETH_HLEN]>,
    report: SeqReport,
}

impl SeqChecker {
    /// A checker expecting `start` first (e.g. 0 when the count is known),
    /// or taking the first number it sees (`None`, netmap's behaviour).
    pub fn new(start: Option<u32>) -> SeqChecker {
        SeqChecker {
            expected: start,
            covered: 0,
            seen: vec![0; (WINDOW / 64) as usize],
            eth: None,
            report: SeqReport::default(),
        }
    }

    /// The next number expected.
    pub fn expected(&self) -> Option<u32> {
        self.expected
    }

    /// Totals so far.
    pub fn report(&self) -> &SeqReport {
        &self.report
    }

    fn bit(&self, s: u32) -> bool {
        let i = (s % WINDOW) as usize;
        self.seen[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, s: u32, v: bool) {
        let i = (s % WINDOW) as usize;
        if v {
            self.seen[i / 64] |= 1 << (i % 64);
        } else {
            self.seen[i / 64] &= !(1 << (i % 64));
        }
    }

    fn error(&mut self, kind: ErrorKind, seq: Option<u32>, detail: String) -> Verdict {
        match kind {
            ErrorKind::Corrupt => self.report.corrupt += 1,
            ErrorKind::Duplicate => self.report.duplicates += 1,
            ErrorKind::Reordered => self.report.reordered += 1,
        }
        let e = SeqError { kind, seq, detail };
        if self.report.errors.len() < MAX_KEPT {
            self.report.errors.push(e.clone());
        }
        Verdict::Error(e)
    }

    fn gap(&mut self, first: u32, count: u32) {
        self.report.gaps += 1;
        self.report.lost += u64::from(count);
        if self.report.gap_list.len() < MAX_KEPT {
            self.report.gap_list.push(Gap { first, count });
        }
    }

    /// Accepts `s` as received in the sequence; returns the verdict for an
    /// intact frame.
    fn advance(&mut self, s: u32) -> Verdict {
        self.report.last = Some(match self.report.last {
            Some(l) if s.wrapping_sub(l) >= 1 << 31 => l,
            _ => s,
        });
        self.report.first.get_or_insert(s);
        let Some(e) = self.expected else {
            self.expected = Some(s.wrapping_add(1));
            self.covered = 1;
            self.set(s, true);
            return Verdict::InOrder(s);
        };
        let ahead = s.wrapping_sub(e);
        if ahead < 1 << 31 {
            // s is e (in order) or beyond (a gap of `ahead` numbers).
            let clear = ahead.min(WINDOW);
            for k in 0..clear {
                self.set(e.wrapping_add(k), false);
            }
            self.set(s, true);
            self.expected = Some(s.wrapping_add(1));
            self.covered += u64::from(ahead) + 1;
            if ahead == 0 {
                return Verdict::InOrder(s);
            }
            self.gap(e, ahead);
            return Verdict::Gap {
                expected: e,
                found: s,
                missing: ahead,
            };
        }
        // Behind the newest.
        let back = e.wrapping_sub(s);
        if u64::from(back) <= self.covered.min(u64::from(WINDOW)) {
            if self.bit(s) {
                return self.error(ErrorKind::Duplicate, Some(s), String::new());
            }
            // It was counted lost in a gap: it is late, not lost.
            self.set(s, true);
            self.report.lost = self.report.lost.saturating_sub(1);
            return self.error(
                ErrorKind::Reordered,
                Some(s),
                format!("arrived after {}", e.wrapping_sub(1)),
            );
        }
        self.error(
            ErrorKind::Reordered,
            Some(s),
            format!(
                "{back} behind {}: older than the window, may be a duplicate",
                e.wrapping_sub(1)
            ),
        )
    }

    /// Checks one frame (without virtio-net header).
    pub fn check(&mut self, f: &[u8]) -> Verdict {
        self.report.frames += 1;
        let parsed = frame::verify(f);
        let seq = self.read_seq(f);
        let defect: Option<String> = match parsed {
            Err(d) => Some(d.to_string()),
            Ok(p) if p.body_len < SEQ_LEN => {
                Some(Defect::Short(f.len()).to_string() + " for a sequence number")
            }
            Ok(p) => payload_defect(&f[p.body..p.body + p.body_len])
                .or_else(|| self.eth_defect(f))
                .map(|at| match at {
                    Mismatch::Payload(i) => format!(
                        "payload byte {} (frame byte {}) is 0x{:02x}",
                        i,
                        p.body + i,
                        f[p.body + i]
                    ),
                    Mismatch::Eth(i) => format!(
                        "Ethernet header byte {i} is 0x{:02x}, the first frame had 0x{:02x}",
                        f[i],
                        self.eth.map_or(0, |e| e[i])
                    ),
                }),
        };
        match defect {
            None => {
                if self.eth.is_none() {
                    let mut h = [0u8; ETH_HLEN];
                    h.copy_from_slice(&f[..ETH_HLEN]);
                    self.eth = Some(h);
                }
                self.advance(seq.expect("checked"))
            }
            Some(detail) => {
                // The number of a damaged frame is only trusted when it is
                // the one expected (else a flipped bit in it would fake a
                // gap or a reordering).
                if let (Some(s), Some(e)) = (seq, self.expected) {
                    if s == e {
                        self.advance(s);
                    }
                }
                self.error(ErrorKind::Corrupt, seq, detail)
            }
        }
    }

    /// Ends the run knowing the sender sent numbers up to `last`
    /// (inclusive): numbers after the newest one received are a final gap.
    pub fn finish(&mut self, last: Option<u32>) {
        let (Some(last), Some(e)) = (last, self.expected.or(Some(0))) else {
            return;
        };
        let missing = last.wrapping_add(1).wrapping_sub(e);
        if missing > 0 && missing < 1 << 31 {
            self.gap(e, missing);
            self.expected = Some(last.wrapping_add(1));
        }
    }

    /// Whether every number up to `last` has been accounted for.
    pub fn reached(&self, last: u32) -> bool {
        matches!(self.expected, Some(e) if e.wrapping_sub(last) >= 1 && e.wrapping_sub(last) < 1 << 31)
    }
}

enum Mismatch {
    Payload(usize),
    Eth(usize),
}

impl SeqChecker {
    /// The sequence number where it should be, even in a damaged frame: the
    /// payload offset follows the ethertype, or the first frame's if the
    /// ethertype itself is damaged.
    fn read_seq(&self, f: &[u8]) -> Option<u32> {
        let af = |et: &[u8]| match u16::from_be_bytes([et[0], et[1]]) {
            frame::ETHERTYPE_IP => Some(Af::V4),
            frame::ETHERTYPE_IPV6 => Some(Af::V6),
            _ => None,
        };
        let body = f
            .get(12..14)
            .and_then(af)
            .or_else(|| self.eth.and_then(|e| af(&e[12..14])))
            .unwrap_or(Af::V4)
            .headers();
        f.get(body..body + SEQ_LEN)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }

    fn eth_defect(&self, f: &[u8]) -> Option<Mismatch> {
        let e = self.eth?;
        (0..ETH_HLEN).find(|&i| f[i] != e[i]).map(Mismatch::Eth)
    }
}

/// The first payload byte after the sequence number that matches neither of
/// netmap's payload texts.
fn payload_defect(body: &[u8]) -> Option<Mismatch> {
    let first_bad = |pat: &[u8]| {
        body.iter()
            .enumerate()
            .skip(SEQ_LEN)
            .find(|(i, b)| **b != pat[i % pat.len()])
            .map(|(i, _)| i)
    };
    let d = first_bad(DIRECT_PAYLOAD)?;
    first_bad(INDIRECT_PAYLOAD)?;
    Some(Mismatch::Payload(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameSpec, IpRange, BROADCAST};

    fn template(size: usize) -> Template {
        Template::new(&FrameSpec {
            af: Af::V4,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: BROADCAST,
            src: IpRange::parse("10.0.0.1", Af::V4).unwrap(),
            dst: IpRange::parse("10.1.0.1", Af::V4).unwrap(),
            size,
            virt_header: 0,
            indirect_payload: false,
        })
        .unwrap()
    }

    fn frame(t: &mut Template, seq: u32) -> Vec<u8> {
        assert!(stamp(t, seq));
        t.frame().to_vec()
    }

    fn run(seqs: &[u32], start: Option<u32>) -> (SeqChecker, Vec<Verdict>) {
        let mut t = template(60);
        let mut c = SeqChecker::new(start);
        let v = seqs.iter().map(|&s| c.check(&frame(&mut t, s))).collect();
        (c, v)
    }

    #[test]
    fn in_order_is_clean() {
        let seqs: Vec<u32> = (0..1000).collect();
        let (c, v) = run(&seqs, Some(0));
        assert!(v.iter().all(|v| matches!(v, Verdict::InOrder(_))));
        let r = c.report();
        assert_eq!((r.frames, r.gaps, r.lost, r.error_count()), (1000, 0, 0, 0));
        assert_eq!((r.first, r.last), (Some(0), Some(999)));
        assert!(c.reached(999));
        assert!(!c.reached(1000));
    }

    #[test]
    fn injected_gap_is_counted_not_an_error() {
        let (c, v) = run(&[0, 1, 2, 5, 6], Some(0));
        assert_eq!(
            v[3],
            Verdict::Gap {
                expected: 3,
                found: 5,
                missing: 2
            }
        );
        let r = c.report();
        assert_eq!((r.gaps, r.lost, r.error_count()), (1, 2, 0));
        assert_eq!(r.gap_list, vec![Gap { first: 3, count: 2 }]);
    }

    #[test]
    fn injected_duplicate_is_an_error_with_its_number() {
        let (c, v) = run(&[0, 1, 2, 2, 3, 1], Some(0));
        let r = c.report();
        assert_eq!((r.duplicates, r.gaps, r.lost), (2, 0, 0));
        assert!(
            matches!(&v[3], Verdict::Error(e) if e.kind == ErrorKind::Duplicate && e.seq == Some(2))
        );
        assert!(
            matches!(&v[5], Verdict::Error(e) if e.kind == ErrorKind::Duplicate && e.seq == Some(1))
        );
    }

    #[test]
    fn injected_reordering_is_an_error_and_not_lost() {
        let (c, v) = run(&[0, 2, 1, 3], Some(0));
        let r = c.report();
        assert_eq!((r.gaps, r.lost, r.reordered, r.duplicates), (1, 0, 1, 0));
        assert!(
            matches!(&v[2], Verdict::Error(e) if e.kind == ErrorKind::Reordered && e.seq == Some(1))
        );
    }

    #[test]
    fn injected_corrupt_byte_is_an_error_at_every_offset() {
        let mut t = template(60);
        for at in 0..60 {
            let mut c = SeqChecker::new(Some(0));
            assert!(matches!(c.check(&frame(&mut t, 0)), Verdict::InOrder(0)));
            let mut f = frame(&mut t, 1);
            f[at] ^= 0x20;
            let v = c.check(&f);
            assert!(
                matches!(&v, Verdict::Error(e) if e.kind == ErrorKind::Corrupt),
                "byte {at}: {v:?}"
            );
            // The next frame is in order: the damaged one did not fake a gap
            // when its number was intact.
            let v2 = c.check(&frame(&mut t, 2));
            let r = c.report();
            assert_eq!(r.corrupt, 1, "byte {at}");
            if !(42..46).contains(&at) {
                assert_eq!(v2, Verdict::InOrder(2), "byte {at}");
                assert!(
                    matches!(&v, Verdict::Error(e) if e.seq == Some(1)),
                    "byte {at}"
                );
                assert_eq!(r.lost, 0, "byte {at}");
            }
        }
    }

    #[test]
    fn corrupt_payload_reports_the_byte() {
        let mut t = template(100);
        let mut c = SeqChecker::new(None);
        let mut f = frame(&mut t, 7);
        f[60] = b'#';
        // Fix the checksum so only the payload check can see it.
        let good = t.frame()[60];
        let cs = u16::from_be_bytes([f[40], f[41]]);
        let cs = crate::frame::checksum_adjust(cs, &[good, f[61]], &[b'#', f[61]]);
        f[40..42].copy_from_slice(&cs.to_be_bytes());
        assert!(crate::frame::verify(&f).is_ok());
        match c.check(&f) {
            Verdict::Error(e) => {
                assert_eq!(e.kind, ErrorKind::Corrupt);
                assert_eq!(e.seq, Some(7));
                assert!(e.detail.contains("payload byte 18"), "{}", e.detail);
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn ethernet_header_change_is_corrupt() {
        let mut t = template(60);
        let mut c = SeqChecker::new(Some(0));
        c.check(&frame(&mut t, 0));
        let mut f = frame(&mut t, 1);
        f[3] ^= 1;
        assert!(
            matches!(c.check(&f), Verdict::Error(e) if e.kind == ErrorKind::Corrupt && e.detail.contains("Ethernet"))
        );
    }

    #[test]
    fn first_number_taken_without_start_and_tail_gap_with_finish() {
        let (mut c, _) = run(&[100, 101, 102], None);
        assert_eq!(c.report().first, Some(100));
        assert_eq!(c.report().lost, 0);
        c.finish(Some(109));
        assert_eq!((c.report().gaps, c.report().lost), (1, 7));
        // With a known start, missing first frames are a gap.
        let (c, _) = run(&[3, 4], Some(0));
        assert_eq!((c.report().gaps, c.report().lost), (1, 3));
    }

    #[test]
    fn wraps_around_u32() {
        let (c, v) = run(&[u32::MAX - 1, u32::MAX, 0, 1], None);
        assert!(v.iter().all(|v| matches!(v, Verdict::InOrder(_))));
        assert_eq!(c.report().error_count(), 0);
    }

    #[test]
    fn late_before_start_does_not_go_negative() {
        let (c, v) = run(&[10, 11, 9], None);
        assert!(matches!(&v[2], Verdict::Error(e) if e.kind == ErrorKind::Reordered));
        assert_eq!(c.report().lost, 0);
    }

    #[test]
    fn merge_and_summary() {
        let (a, _) = run(&[0, 2], Some(0));
        let (b, _) = run(&[0, 0], Some(0));
        let mut r = a.report().clone();
        r.merge(b.report());
        assert_eq!((r.frames, r.lost, r.duplicates), (4, 1, 1));
        assert_eq!(
            r.summary(),
            "rxseq: 4 frames, seq 0..2: 1 gaps (1 lost), 1 errors (0 corrupt, 1 duplicate, 0 reordered)"
        );
    }
}
