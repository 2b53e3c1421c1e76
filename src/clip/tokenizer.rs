//! OpenCLIP's byte-level BPE tokenizer, read from the vocabulary file its wheel ships
//! (`bpe_simple_vocab_16e6.txt.gz`): the same cleaning, the same split, the same merges and
//! ids, start and end tokens, 77 tokens a sentence.
//!
//! open_clip cleans text with `ftfy.fix_text`; the parts of it a shopper's sentence meets are
//! done here (curly quotes, ligatures, full-width letters, control characters, NFC), not its
//! repair of mis-decoded UTF-8 ("Ã©" stays as it is). The parity test holds the ids to
//! open_clip's on the sentences of `tests/data/clip_sentences.txt`.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::Context;
use unicode_normalization::UnicodeNormalization;

/// Tokens a sentence becomes, start and end included.
pub const CONTEXT: usize = 77;

/// Merges open_clip reads from the file: all but the header line, up to this many.
const MERGES: usize = 49152 - 256 - 2;

/// A piece (one word, one run of punctuation) is cut to this many bytes before its merges: BPE
/// costs up to the square of a piece's length, and the context keeps at most 75 ids of at most
/// 32 bytes each (open_clip's longest token), so no id the model reads comes from past 2,400.
const MAX_PIECE_BYTES: usize = 4096;

pub struct Tokenizer {
    /// BPE symbol -> id.
    ids: HashMap<String, u32>,
    /// Pair of symbol ids -> (merge rank, lower merges first; the merged symbol's id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Byte -> the printable character standing for it.
    byte_chars: [char; 256],
    split: regex::Regex,
    start: u32,
    end: u32,
}

/// GPT-2's table: every byte as a printable character (printable Latin-1 bytes as themselves,
/// the rest from U+0100 on, in byte order).
fn byte_chars() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut table = [' '; 256];
    let mut next = 256;
    for b in 0..256u32 {
        table[b as usize] = if printable(b) {
            char::from_u32(b).expect("Latin-1")
        } else {
            next += 1;
            char::from_u32(next - 1).expect("below U+0200")
        };
    }
    table
}

impl Tokenizer {
    /// Reads the gzipped merges file `models fetch`/`make setup` installs.
    pub fn load(vocabulary: &Path) -> anyhow::Result<Tokenizer> {
        let file = std::fs::File::open(vocabulary).with_context(|| format!("cannot open the CLIP vocabulary {}: run `make setup`", vocabulary.display()))?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(file).read_to_string(&mut text).with_context(|| format!("{} is not a gzipped text file", vocabulary.display()))?;
        Tokenizer::from_merges(&text)
    }

    fn from_merges(text: &str) -> anyhow::Result<Tokenizer> {
        let merges: Vec<(String, String)> = text
            .split('\n')
            .skip(1)
            .take(MERGES)
            .map(|line| line.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).with_context(|| format!("not a merge: {line:?}")))
            .collect::<anyhow::Result<_>>()?;
        anyhow::ensure!(merges.len() == MERGES, "the CLIP vocabulary has {} merges, not {MERGES}", merges.len());
        let byte_chars = byte_chars();
        // open_clip's order: the bytes that stand for themselves first, then the others.
        let mut order: Vec<char> = byte_chars.to_vec();
        order.sort_by_key(|&c| (u32::from(c) >= 256, u32::from(c)));
        let symbols = order.iter().map(char::to_string).chain(order.iter().map(|c| format!("{c}</w>"))).chain(merges.iter().map(|(a, b)| format!("{a}{b}")));
        let mut ids: HashMap<String, u32> = symbols.chain(["<start_of_text>".to_string(), "<end_of_text>".to_string()]).enumerate().map(|(id, symbol)| (symbol, id as u32)).collect();
        let (start, end) = (ids["<start_of_text>"], ids["<end_of_text>"]);
        ids.shrink_to_fit();
        // A merge of symbols no earlier merge makes can never apply: it is left out.
        let merges = merges.iter().enumerate().filter_map(|(rank, (a, b))| Some(((*ids.get(a.as_str())?, *ids.get(b.as_str())?), (rank as u32, ids[format!("{a}{b}").as_str()])))).collect();
        let split = regex::Regex::new(r"(?i)<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+").expect("a valid pattern");
        Ok(Tokenizer { ids, merges, byte_chars, split, start, end })
    }

    /// The ids of `text`'s tokens, without start and end, stopping once there are `limit` (a
    /// sentence longer than the context is cut anyway).
    pub fn encode(&self, text: &str, limit: usize) -> Vec<u32> {
        let text = clean(text);
        let mut ids = Vec::new();
        for piece in self.split.find_iter(&text) {
            if ids.len() >= limit {
                break;
            }
            let piece = piece.as_str();
            if let Some(&special) = self.ids.get(piece).filter(|_| piece.starts_with('<') && piece.ends_with("_text>")) {
                ids.push(special);
                continue;
            }
            let cut = (0..=MAX_PIECE_BYTES.min(piece.len())).rev().find(|&at| piece.is_char_boundary(at)).unwrap_or(0);
            ids.extend(self.bpe(&piece[..cut]));
        }
        ids
    }

    /// `text` as the model reads it: start, tokens, end, cut to [`CONTEXT`] (the end kept), the
    /// rest zeros.
    pub fn context(&self, text: &str) -> [i64; CONTEXT] {
        let mut tokens: Vec<u32> = std::iter::once(self.start).chain(self.encode(text, CONTEXT)).chain(std::iter::once(self.end)).collect();
        if tokens.len() > CONTEXT {
            tokens.truncate(CONTEXT);
            tokens[CONTEXT - 1] = self.end;
        }
        let mut row = [0i64; CONTEXT];
        for (slot, token) in row.iter_mut().zip(tokens) {
            *slot = i64::from(token);
        }
        row
    }

    /// One piece's ids: its bytes as symbols, the last carrying the end-of-word mark, merged
    /// pair by pair, the lowest-ranked pair first (every occurrence of it, left to right).
    fn bpe(&self, piece: &str) -> Vec<u32> {
        let bytes = piece.as_bytes();
        let mut word: Vec<u32> = bytes.iter().map(|&b| self.ids[self.byte_chars[b as usize].to_string().as_str()]).collect();
        if let (Some(last), Some(&b)) = (word.last_mut(), bytes.last()) {
            *last = self.ids[format!("{}</w>", self.byte_chars[b as usize]).as_str()];
        }
        while word.len() > 1 {
            let Some((_, first, second, merged)) = word.windows(2).filter_map(|pair| self.merges.get(&(pair[0], pair[1])).map(|&(rank, merged)| (rank, pair[0], pair[1], merged))).min() else { break };
            let mut next = Vec::with_capacity(word.len());
            let mut at = 0;
            while at < word.len() {
                if at + 1 < word.len() && (word[at], word[at + 1]) == (first, second) {
                    next.push(merged);
                    at += 2;
                } else {
                    next.push(word[at]);
                    at += 1;
                }
            }
            word = next;
        }
        word
    }
}

/// open_clip's cleaning: `ftfy.fix_text` (the parts listed in the module's documentation, in
/// ftfy's order: entities where the text has no `<`, control characters, ligatures and widths,
/// quotes, NFC), HTML entities decoded twice more, whitespace runs made one space, lower case.
pub fn clean(text: &str) -> String {
    let text = if text.contains('<') { text.to_string() } else { unescape_html(text) };
    let plain: String = text
        .chars()
        .filter(|&c| !is_removed_control(c))
        .flat_map(|c| -> Box<dyn Iterator<Item = char>> {
            match c {
                '\u{3000}' => Box::new(std::iter::once(' ')),
                // Latin ligatures, and full-width and half-width forms, as their plain letters.
                '\u{0132}' | '\u{0133}' | '\u{0149}' | '\u{01c4}'..='\u{01cc}' | '\u{01f1}'..='\u{01f3}' | '\u{fb00}'..='\u{fb06}' | '\u{ff01}'..='\u{ffee}' => {
                    Box::new(c.to_string().nfkc().collect::<Vec<_>>().into_iter())
                }
                _ => Box::new(std::iter::once(c)),
            }
        })
        .map(|c| match c {
            '\u{2018}'..='\u{201b}' | '\u{02bc}' => '\'',
            '\u{201c}'..='\u{201f}' => '"',
            _ => c,
        })
        .nfc()
        .collect();
    let unescaped = unescape_html(&unescape_html(plain.trim()));
    unescaped.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// The control characters ftfy removes (tabs and line breaks stay: they are white space).
fn is_removed_control(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{e}'..='\u{1f}' | '\u{7f}' | '\u{206a}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffc}')
}

/// HTML character references decoded as Python's `html.unescape` does for well-formed ones
/// (`&amp;`, `&#39;`, `&#x2019;`); anything else is left as written.
fn unescape_html(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let reference = rest.find(';').filter(|&end| end <= 33).map(|end| &rest[..=end]);
        match reference.and_then(|r| htmlescape::decode_html(r).ok().filter(|decoded| decoded.chars().count() <= 2).map(|decoded| (r.len(), decoded))) {
            Some((length, decoded)) => {
                out.push_str(&decoded);
                rest = &rest[length..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary of the right size whose first merges spell "low" and "lower".
    fn tokenizer() -> Tokenizer {
        let mut lines = vec!["#version: test".to_string(), "l o".into(), "lo w</w>".into(), "lo w".into(), "e r</w>".into(), "low er</w>".into()];
        lines.extend((lines.len()..=MERGES).map(|n| format!("x{n} y{n}")));
        Tokenizer::from_merges(&lines.join("\n")).unwrap()
    }

    #[test]
    fn merges_apply_by_rank_and_words_end_marked() {
        let tokenizer = tokenizer();
        let id = |symbol: &str| tokenizer.ids[symbol];
        assert_eq!(tokenizer.bpe("low"), [id("low</w>")]);
        assert_eq!(tokenizer.bpe("lower"), [id("lower</w>")]);
        assert_eq!(tokenizer.bpe("lowx"), [id("low"), id("x</w>")]);
        assert_eq!(tokenizer.bpe("q"), [id("q</w>")]);
    }

    #[test]
    fn ids_follow_open_clips_vocabulary_order() {
        let tokenizer = tokenizer();
        // 256 bytes, 256 end-of-word bytes, then merges in order, then the two special tokens.
        assert_eq!(tokenizer.ids["!"], 0);
        assert_eq!(tokenizer.ids["!</w>"], 256);
        assert_eq!(tokenizer.ids["lo"], 512);
        assert_eq!((tokenizer.start, tokenizer.end), (49406, 49407));
        assert_eq!(tokenizer.encode("Low LOWER", CONTEXT), [513, 516]);
        assert_eq!(tokenizer.encode("low low low", 2), [513, 513], "stops at the limit");
        let row = tokenizer.context("low");
        assert_eq!(row[..3], [49406, 513, 49407]);
        assert!(row[3..].iter().all(|&t| t == 0));
    }

    #[test]
    fn a_long_sentence_keeps_its_end_token() {
        let tokenizer = tokenizer();
        let row = tokenizer.context(&"low ".repeat(200));
        assert_eq!((row[0], row[CONTEXT - 2], row[CONTEXT - 1]), (49406, 513, 49407));
    }

    #[test]
    fn any_text_becomes_a_whole_context_quickly() {
        let tokenizer = tokenizer();
        let alphabet: Vec<char> = "aZ9 ,.'\"\t\n&;#<>é\u{301}ß€漢字😀\u{200d}👩\u{1c}\u{0}\u{feff}ﬁＡ\u{2019}\u{149}".chars().collect();
        let mut rng = crate::rng::Rng::new(30);
        for round in 0..2_000 {
            let length = if round % 100 == 0 { 20_000 } else { rng.below(300) as usize };
            let text: String = (0..length).map(|_| alphabet[rng.below(alphabet.len() as u64) as usize]).collect();
            let row = tokenizer.context(&text);
            assert_eq!(row[0], 49406, "{text:?}");
            let end = row.iter().position(|&t| t == 49407).unwrap_or_else(|| panic!("no end token: {text:?}"));
            assert!(row[end + 1..].iter().all(|&t| t == 0), "zeros after the end: {text:?}");
            assert!(row[1..end].iter().all(|&t| (0..49406).contains(&t)), "{text:?}");
        }
        // One word of 100,000 letters is cut to its first 4,096 bytes before its merges: 2,047
        // "lo", then "l" and "o</w>" (this vocabulary has no "l o</w>").
        assert_eq!(tokenizer.encode(&"lo".repeat(50_000), usize::MAX).len(), MAX_PIECE_BYTES / 2 + 1);
    }

    #[test]
    fn cleaning_does_what_ftfy_and_html_unescape_do_to_shoppers_sentences() {
        for (raw, clean_text) in [
            ("  “Curly”  ‘quotes’\tand\n\nspaces ", "\"curly\" 'quotes' and spaces"),
            ("ﬁne ﬂoor ＡＢＣ１２３", "fine floor abc123"),
            ("salt &amp;amp; pepper &quot;x&quot; &#39;y&#x27; &bogus; AT&T", "salt & pepper \"x\" 'y' &bogus; at&t"),
            ("Cafe\u{301} Ångström\u{feff}", "café ångström"),
            ("it&#8217;s a\u{1c}b \u{149}", "it's ab 'n"),
        ] {
            assert_eq!(clean(raw), clean_text, "{raw:?}");
        }
    }
}
