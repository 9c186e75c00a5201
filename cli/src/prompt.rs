//! Questions to the person at the terminal.

use std::io::{BufRead, IsTerminal, Write};

/// Asks `question` on stderr and reads the answer: yes only for `y`,
/// `Y` or `yes`; no, without asking, when standard input is not a
/// terminal (a script or CI never gets a silent yes).
pub(crate) fn confirm(question: &str) -> bool {
    if !std::io::stdin().is_terminal() {
        return false;
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    matches!(answer.trim(), "y" | "Y" | "yes")
}
