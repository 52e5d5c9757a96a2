//! A private Mosquitto per test, on a free port, with the project's
//! `deploy/mosquitto/conf.d` limits and persistence on — never the
//! machine's default broker, whose stock queue limit silently drops QoS 1
//! messages.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    pub port: u16,
    pub url: String,
    child: Child,
    dir: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Broker {
    pub fn start() -> Broker {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "pentrace-mosquitto-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let limits = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/mosquitto/conf.d");
        let config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
             persistence_location {}/\nlog_dest file {}/mosquitto.log\ninclude_dir {limits}\n",
            dir.display(),
            dir.display()
        );
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, config).expect("broker config");
        let child = Command::new(mosquitto())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (.ci/services.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker {
            port,
            url: format!("mqtt://127.0.0.1:{port}"),
            child,
            dir,
        }
    }
}

fn mosquitto() -> &'static str {
    if std::path::Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    }
}
