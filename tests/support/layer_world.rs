//! One world for the layer's fuzz target (`fuzz/fuzz_targets/layer.rs`)
//! and its property test (`tests/layer_properties.rs`), which include this
//! file: a store with an open key, a key usable from 10.0.0.0/8 only and a
//! revoked key, behind an `ApiKeyLayer` that trusts proxies on 127.0.0.0/8.

use std::sync::OnceLock;

use tm_auth::{ApiKeyLayer, KeyManager, KeyUpdate, MemoryStore, NewKey};

pub(crate) struct World {
    pub runtime: tokio::runtime::Runtime,
    pub layer: ApiKeyLayer,
    /// Open, usable from 10.0.0.0/8 only, revoked.
    pub secrets: [String; 3],
}

pub(crate) fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (layer, secrets) = runtime.block_on(async {
            let manager = KeyManager::new(MemoryStore::new());
            let open = manager.create(NewKey::new("acct", "Open")).await.unwrap();
            let fenced = manager.create(NewKey::new("acct", "Fenced")).await.unwrap();
            manager
                .update(
                    &fenced.record.id,
                    KeyUpdate::new().allowed_ips(["10.0.0.0/8".parse().unwrap()]),
                )
                .await
                .unwrap();
            let revoked = manager
                .create(NewKey::new("acct", "Revoked"))
                .await
                .unwrap();
            manager.revoke(&revoked.record.id).await.unwrap();
            let secrets = [open, fenced, revoked].map(|c| c.key.expose_secret().to_owned());
            let layer = ApiKeyLayer::new(manager).trusted_proxies(["127.0.0.0/8".parse().unwrap()]);
            (layer, secrets)
        });
        World {
            runtime,
            layer,
            secrets,
        }
    })
}
