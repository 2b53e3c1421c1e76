//! Pure text helpers of feed reading: a product description's HTML as plain text ([`html_to_text`]),
//! and the category helpers that name catalogue folders: one level of a category path ([`level`])
//! and a folder name from any text ([`slug`], accents folded).

// ---------------------------------------------------------------------------------------------
// Description HTML to plain text.

/// Plain text from a product description's HTML: tags removed; <br>, </p>, </div>, </li>, </h1-6>,
/// </tr> become line breaks (so do opening block tags not already at a line's start), <li> starts
/// with "- "; entities decoded (named, &#123;, &#x1F;) via htmlescape, undecodable text kept as is;
/// <script>/<style> content and comments dropped; runs of spaces collapsed, blank lines collapsed to
/// one, trimmed. Text without tags comes back trimmed and whitespace-collapsed only. Never panics.
pub fn html_to_text(html: &str) -> String {
    if next_tag(html).is_none() {
        return tidy(html);
    }
    let mut out = String::new();
    let mut rest = html;
    while let Some(at) = next_tag(rest) {
        push_text(&mut out, &rest[..at]);
        rest = skip_tag(&mut out, &rest[at..]);
    }
    push_text(&mut out, rest);
    tidy(&out)
}

/// Where the next tag starts: a '<' followed by a letter, '/' and a letter, '!' or '?' ("a < b" is text).
fn next_tag(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    text.match_indices('<').map(|(at, _)| at).find(|&at| match bytes.get(at + 1) {
        Some(b'!' | b'?') => true,
        Some(b'/') => bytes.get(at + 2).is_some_and(u8::is_ascii_alphabetic),
        Some(next) => next.is_ascii_alphabetic(),
        None => false,
    })
}

/// Consumes the tag at the start of `rest` (writing the break it stands for) and returns what follows.
fn skip_tag<'a>(out: &mut String, rest: &'a str) -> &'a str {
    if let Some(comment) = rest.strip_prefix("<!--") {
        return comment.find("-->").map_or("", |end| &comment[end + 3..]);
    }
    // An unclosed tag runs to the end of the text, as in a browser.
    let Some(end) = tag_end(rest) else { return "" };
    let inner = &rest[1..end];
    let after = &rest[end + 1..];
    let closing = inner.starts_with('/');
    let name = inner.trim_start_matches('/').chars().take_while(char::is_ascii_alphanumeric).collect::<String>().to_ascii_lowercase();
    if !closing && (name == "script" || name == "style") && !inner.ends_with('/') {
        // Their content is code, not text: skip it and the closing tag.
        let Some(close) = after.to_ascii_lowercase().find(&format!("</{name}")) else { return "" };
        let tail = &after[close..];
        return tag_end(tail).map_or("", |end| &tail[end + 1..]);
    }
    let block = matches!(name.as_str(), "p" | "div" | "li" | "tr" | "ul" | "ol" | "table" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6");
    match name.as_str() {
        "br" | "hr" => out.push('\n'),
        "td" | "th" if closing => out.push(' '),
        "li" if !closing => {
            new_line(out);
            out.push_str("- ");
        }
        _ if block => new_line(out),
        _ => {}
    }
    after
}

/// The byte index of the '>' closing the tag that starts `tag`; one inside a quoted attribute value
/// does not count.
fn tag_end(tag: &str) -> Option<usize> {
    let mut quote = None;
    let mut previous = ' ';
    for (at, c) in tag.char_indices().skip(1) {
        match quote {
            Some(open) if c == open => quote = None,
            Some(_) => {}
            // Quotes open a value only after '=': elsewhere they are stray text in a broken tag.
            None if (c == '"' || c == '\'') && previous == '=' => quote = Some(c),
            None if c == '>' => return Some(at),
            None => {}
        }
        if !c.is_whitespace() {
            previous = c;
        }
    }
    None
}

/// Starts a new line unless the text is at the start of one already (so `</p><p>` is one break).
fn new_line(out: &mut String) {
    let trimmed = out.trim_end_matches(' ');
    if !trimmed.is_empty() && !trimmed.ends_with('\n') {
        out.push('\n');
    }
}

/// Appends text between tags: entities decoded, and any whitespace (source line breaks included)
/// read as a space, as HTML does.
fn push_text(out: &mut String, text: &str) {
    let mut decoded = String::with_capacity(text.len());
    decode_entities(&mut decoded, text);
    out.extend(decoded.chars().map(|c| if c.is_whitespace() { ' ' } else { c }));
}

/// Decodes each `&name;`, `&#123;` and `&#x1F;` with htmlescape; one it cannot decode, and a '&'
/// that starts no entity, stay as written.
fn decode_entities(out: &mut String, text: &str) {
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        let length = tail[1..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '#')).filter(|&n| (1..=32).contains(&n) && tail[1 + n..].starts_with(';'));
        match length {
            Some(n) => {
                let entity = &tail[..n + 2];
                match htmlescape::decode_html(entity) {
                    Ok(decoded) => out.push_str(&decoded),
                    Err(_) => out.push_str(entity),
                }
                rest = &tail[n + 2..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
}

/// Collapses runs of whitespace within lines, trims lines, keeps at most one blank line in a row,
/// and drops blank lines at both ends.
fn tidy(text: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    for line in text.split('\n') {
        let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
        let blank_before = lines.last().is_none_or(String::is_empty);
        if !line.is_empty() || !blank_before {
            lines.push(line);
        }
    }
    while lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    lines.join("\n")
}

// ---------------------------------------------------------------------------------------------
// Categories.

/// A category name from one level of a path like "Home & Garden > Furniture > Beds": level 1 =
/// "Home & Garden". Levels split on '>' only, each trimmed; None when the path has fewer levels (or
/// the level is blank).
pub fn level(path: &str, level: usize) -> Option<&str> {
    let name = path.split('>').nth(level.checked_sub(1)?)?.trim();
    (!name.is_empty()).then_some(name)
}

/// A category folder name from any text: lower-case, '&' dropped, every run of characters other than
/// ASCII letters/digits becomes one '-', no leading/trailing '-'; accents folded for common Latin
/// letters (é->e, ü->u, ß->ss, ø->o, å->a, æ->ae, ç->c, ñ->n). "Home & Garden" -> "home-garden";
/// "T-Shirts & Tops" -> "t-shirts-tops".
pub fn slug(text: &str) -> String {
    let mut out = String::new();
    let mut gap = false;
    for c in text.chars().flat_map(char::to_lowercase) {
        // Combining accents (from decomposed text, or 'İ' lower-cased) belong to the letter before.
        if c == '&' || ('\u{300}'..='\u{36f}').contains(&c) {
            continue;
        }
        let mut buffer = [0; 4];
        let plain = fold_accent(c).unwrap_or_else(|| c.encode_utf8(&mut buffer));
        for c in plain.chars() {
            if c.is_ascii_alphanumeric() {
                if gap && !out.is_empty() {
                    out.push('-');
                }
                gap = false;
                out.push(c);
            } else {
                gap = true;
            }
        }
    }
    out
}

/// The ASCII spelling of a lower-case accented Latin letter.
fn fold_accent(c: char) -> Option<&'static str> {
    let plain = match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ą' | 'ă' => "a",
        'æ' => "ae",
        'ç' | 'ć' | 'č' => "c",
        'ď' | 'đ' | 'ð' => "d",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ę' | 'ě' => "e",
        'ğ' => "g",
        'ì' | 'í' | 'î' | 'ï' | 'ī' | 'ı' => "i",
        'ł' => "l",
        'ñ' | 'ń' | 'ň' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ő' => "o",
        'œ' => "oe",
        'ř' => "r",
        'ß' => "ss",
        'ś' | 'š' | 'ş' => "s",
        'ť' | 'ţ' => "t",
        'þ' => "th",
        'ù' | 'ú' | 'û' | 'ü' | 'ū' | 'ů' | 'ű' => "u",
        'ý' | 'ÿ' => "y",
        'ź' | 'ż' | 'ž' => "z",
        _ => return None,
    };
    Some(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::parse::testing::pick;
    use crate::rng::Rng;

    #[test]
    fn html_becomes_plain_text() {
        assert_eq!(html_to_text("  plain   text\n\n\n\nsecond  line  "), "plain text\n\nsecond line");
        assert_eq!(html_to_text("Fish & Chips &amp; more"), "Fish & Chips &amp; more");
        assert_eq!(html_to_text("<h2>Title</h2>Body<br/>next<br><br>after"), "Title\nBody\nnext\n\nafter");
        assert_eq!(html_to_text("<ul><li>One</li>\n<li>Two &lt;3</li></ul><p>End&#33; &#x263A; &bogus; &amp</p>"), "- One\n- Two <3\nEnd! ☺ &bogus; &amp");
        assert_eq!(html_to_text("<div>a<script>var x = '<p>';</script>b<style>p { }</style>c<!-- <p>hidden</p> -->d</div>"), "abcd");
        assert_eq!(html_to_text("<a href=\"x>y\" title='a>b'>link</a> 2 < 3 > 1"), "link 2 < 3 > 1");
        assert_eq!(html_to_text("<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table>"), "a b\nc");
        assert_eq!(html_to_text("text <p unclosed"), "text");
        assert_eq!(html_to_text("<?xml version=\"1.0\"?><!DOCTYPE html><p>x</p>"), "x");
        assert_eq!(html_to_text("&#xD800; &#99999999999; &#; &"), "&#xD800; &#99999999999; &#; &");
    }

    #[test]
    fn levels_and_slugs() {
        let path = "Home & Garden > Furniture > Beds";
        assert_eq!(level(path, 1), Some("Home & Garden"));
        assert_eq!(level(path, 3), Some("Beds"));
        assert_eq!(level(path, 4), None);
        assert_eq!(level(path, 0), None);
        assert_eq!(level("Shoes/Boots", 1), Some("Shoes/Boots"));
        assert_eq!(level("", 1), None);
        assert_eq!(slug("Home & Garden"), "home-garden");
        assert_eq!(slug("T-Shirts & Tops"), "t-shirts-tops");
        assert_eq!(slug("  Crème Brûlée / Straße  "), "creme-brulee-strasse");
        assert_eq!(slug("Ærø Smørrebrød, Åland, Façade, Niño"), "aero-smorrebrod-aland-facade-nino");
        assert_eq!(slug("--"), "");
        assert_eq!(slug("İstanbul 日本 2024"), "istanbul-2024");
    }

    #[test]
    fn html_to_text_never_panics_and_is_tidy() {
        let alphabet: Vec<char> = "<>&;#/\"' \n\tabpliryxst1!-=&#x3C".chars().collect();
        let mut rng = Rng::new(5);
        for _ in 0..20_000 {
            let text: String = (0..rng.below(60)).map(|_| alphabet[rng.below(alphabet.len() as u64) as usize]).collect();
            let plain = html_to_text(&text);
            assert_eq!(plain.trim(), plain, "{text:?}");
            assert!(!plain.contains("  ") && !plain.contains("\n\n\n") && !plain.contains(" \n") && !plain.contains("\n "), "{text:?} -> {plain:?}");
        }
    }

    #[test]
    fn removed_tags_do_not_come_back() {
        // Text pieces without '<' and without letters that could spell an entity for it.
        let pieces = ["<p>", "</p>", "<br>", "<br/>", "<li>", "</li>", "<P class=\"x\">", "a", "b p", " ", "\n", "&", "&amp;", ";", ">", "#", "\"", "'", "/", "br"];
        let mut rng = Rng::new(9);
        for _ in 0..5000 {
            let text: String = (0..rng.below(30)).map(|_| pick(&mut rng, &pieces)).collect();
            let plain = html_to_text(&text).to_lowercase();
            assert!(!plain.contains("<p") && !plain.contains("<br") && !plain.contains("<li"), "{text:?} -> {plain:?}");
        }
    }
}
