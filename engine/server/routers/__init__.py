"""HTTP routers, one module per resource (`build(limits) -> APIRouter`)."""
