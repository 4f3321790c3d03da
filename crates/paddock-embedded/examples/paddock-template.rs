//! `paddock template list|build NAME` until the real CLI exists.

use paddock_embedded::{TemplateSpec, Templates};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let data =
        std::env::var(paddock_embedded::DATA_DIR_ENV).unwrap_or_else(|_| "/var/lib/paddock".into());
    let cache = std::env::var(paddock_embedded::TEMPLATE_CACHE_ENV)
        .unwrap_or_else(|_| format!("{data}/templates"));
    let t = Templates::new(
        cache.into(),
        [TemplateSpec::base(), TemplateSpec::code_interpreter()],
    );
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["list"] => {
            for s in t.specs() {
                let built = t.layers(&s.name)?.is_some();
                println!(
                    "{:24} {:8} {}",
                    s.name,
                    if built { "built" } else { "-" },
                    t.hash(&s.name)?
                );
            }
        }
        ["build", name] => {
            let layers = t.build(name, &|l| println!("{l}"))?;
            println!("layers: {layers:?}");
        }
        _ => anyhow::bail!("usage: paddock-template list | build NAME"),
    }
    Ok(())
}
