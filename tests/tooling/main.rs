//! Checks on the repository as a whole, one binary: the layering of `src/` (`architecture`), the
//! dataset readers on the real files under data/ (`data_real`), the deployment manifests
//! (`deploy_manifests`), the Grafana dashboard (`grafana_dashboard`), the CPU and GPU container
//! images (`dockerfiles`), the fetch and benchmark scripts (`scripts`), the serving benchmark's
//! report and ceiling (`bench_report`) and `caliper-train plot` (`train_plot`).

mod architecture;
mod bench_report;
mod data_real;
mod deploy_manifests;
mod dockerfiles;
mod grafana_dashboard;
mod scripts;
mod train_plot;
