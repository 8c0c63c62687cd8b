//! A native CGI hello program: what the process-per-request baseline
//! (`cgi-fork`) executes once per request.

fn main() {
    print!("Content-Type: text/plain\r\n\r\nHello from a native CGI process!\n");
}
